// The web client end to end in a real headless Chromium: two browser
// contexts are two users (alice logs in, bob registers), they chat with
// live delivery, ticks turning to read, typing and presence, a picture
// uploaded over HTTPS and shown inline; alice pages back through history;
// carol, on the `quip` CLI over QUIC, joins in.
//
// Run by client-cli/tests/browser.rs, which starts quipd and seeds data,
// with: QUIP_URL, QUIP_SERVER, QUIP_CA, QUIP_BIN, QUIP_CAROL_HOME,
// ALICE_PASSWORD, SCREENSHOT. Exits non-zero on the first failed step.

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const url = env('QUIP_URL');
const T = 15000;

function quip(...args) {
  return execFileSync(env('QUIP_BIN'), args, {
    env: {
      ...process.env,
      QUIP_HOME: env('QUIP_CAROL_HOME'),
      QUIP_SERVER: env('QUIP_SERVER'),
      QUIP_CA: env('QUIP_CA'),
      QUIP_PASSWORD: 'carol-password-1',
    },
    encoding: 'utf8',
    timeout: T,
  });
}

function step(name) {
  console.log(`step: ${name}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors',
  ],
});

try {
  const contexts = [];
  globalThis.contexts = contexts;
  const open = async (who) => {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 700 } });
    contexts.push(ctx);
    const page = await ctx.newPage();
    page.setDefaultTimeout(T);
    page.on('pageerror', (e) => console.log(`[${who} page error] ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') console.log(`[${who} console] ${m.text()}`); });
    await page.goto(url);
    await page.locator('#login').waitFor({ state: 'visible' });
    return page;
  };
  const chat = (page, title) => page.locator(`.chat[data-title="${title}"]`);
  const expectText = async (locator, text) => {
    await locator.filter({ hasText: text }).first().waitFor({ state: 'visible' });
  };

  step('alice logs in; her unread messages from dave are counted');
  const alice = await open('alice');
  await alice.fill('#username', 'alice');
  await alice.fill('#password', env('ALICE_PASSWORD'));
  await alice.click('#login-button');
  await alice.locator('#app').waitFor({ state: 'visible' });
  await expectText(alice.locator('#me'), 'alice');
  await expectText(chat(alice, 'dave').locator('.unread'), '60');

  step('alice opens dave\'s chat and pages back through history');
  await chat(alice, 'dave').click();
  await expectText(alice.locator('.msg'), 'dave 60');
  if ((await alice.locator('.msg').count()) !== 50) throw new Error('first page should hold 50 messages');
  await alice.click('#load-earlier');
  await expectText(alice.locator('.msg').first(), 'dave 1');
  if ((await alice.locator('.msg').count()) !== 60) throw new Error('all 60 after paging');
  await alice.locator('#load-earlier').waitFor({ state: 'hidden' });
  await chat(alice, 'dave').locator('.unread').waitFor({ state: 'detached' });

  step('bob registers in a second browser context');
  const bob = await open('bob');
  await bob.fill('#username', 'bob');
  await bob.fill('#password', 'bob-password-1');
  await bob.click('#register-button');
  await expectText(bob.locator('#me'), 'bob');

  step('alice starts a chat with bob and sends; the tick shows sent, then delivered');
  await alice.fill('#new-chat', 'bob');
  await alice.press('#new-chat', 'Enter');
  await alice.fill('#composer-input', 'hello bob');
  await alice.press('#composer-input', 'Enter');
  const mine = alice.locator('.msg.mine', { hasText: 'hello bob' });
  await mine.and(alice.locator('[data-status="delivered"], [data-status="read"]')).waitFor();
  await expectText(alice.locator('#chat-subtitle'), 'online');

  step('bob sees the chat with one unread, opens it: alice\'s tick turns to read');
  await expectText(chat(bob, 'alice').locator('.unread'), '1');
  await chat(bob, 'alice').click();
  await expectText(bob.locator('.msg'), 'hello bob');
  await mine.and(alice.locator('[data-status="read"]')).waitFor();

  step('bob types: alice sees it; bob\'s reply arrives live');
  await bob.locator('#composer-input').pressSequentially('hi al', { delay: 20 });
  await expectText(alice.locator('#typing'), 'bob is typing');
  await bob.locator('#composer-input').pressSequentially('ice', { delay: 20 });
  await bob.press('#composer-input', 'Enter');
  await expectText(alice.locator('.msg:not(.mine)'), 'hi alice');
  await bob.locator('.msg.mine[data-status="read"]', { hasText: 'hi alice' }).waitFor();

  step('alice sends a picture (HTTPS upload, then a media message); bob sees it inline');
  const picture = await alice.screenshot({ clip: { x: 0, y: 0, width: 160, height: 90 } });
  await alice.fill('#composer-input', 'a picture');
  await alice.setInputFiles('#attach', { name: 'sidebar.png', mimeType: 'image/png', buffer: picture });
  const loaded = () => [...document.querySelectorAll('.msg img.media')].some((i) => i.naturalWidth === 160);
  await bob.waitForFunction(loaded, null, { timeout: T });
  await expectText(bob.locator('.msg'), 'a picture');
  await alice.waitForFunction(loaded, null, { timeout: T });
  await alice.locator('.msg.mine:not([data-status="pending"])', { hasText: 'a picture' }).waitFor();

  step('carol, on the quip CLI over QUIC, messages alice; alice answers from the browser');
  quip('register', 'carol');
  quip('send', 'alice', 'hello from the CLI');
  await expectText(chat(alice, 'carol').locator('.unread'), '1');
  await chat(alice, 'carol').click();
  await expectText(alice.locator('.msg'), 'hello from the CLI');
  await alice.fill('#composer-input', 'hi carol, from the browser');
  await alice.press('#composer-input', 'Enter');
  await alice.locator('.msg.mine:not([data-status="pending"])', { hasText: 'from the browser' }).waitFor();
  const history = quip('--json', 'history', 'alice');
  if (!history.includes('hi carol, from the browser')) throw new Error(`carol's history lacks the reply:\n${history}`);

  step('screenshot of the conversation view');
  await chat(alice, 'bob').click();
  await expectText(alice.locator('.msg'), 'hi alice');
  await alice.screenshot({ path: env('SCREENSHOT') });
  for (const c of contexts) await c.close();
  console.log('ok');
} catch (e) {
  // Keep what each page showed when it failed, beside the screenshot.
  for (const [i, ctx] of (globalThis.contexts || []).entries()) {
    for (const p of ctx.pages()) await p.screenshot({ path: env('SCREENSHOT').replace(/\.png$/, `-failed-${i}.png`) });
  }
  throw e;
} finally {
  await browser.close();
}
