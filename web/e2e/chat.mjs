// The web client end to end in a real headless Chromium: two browser
// contexts are two users (alice logs in, bob registers), they chat with
// live delivery, ticks turning to read, typing and presence, a picture
// uploaded over HTTPS and shown inline; alice pages back through history,
// and a conversation opens at the newest message and follows new ones
// unless she scrolled up; an unknown username is named as such; carol, on
// the `quip` CLI over QUIC, joins in; alice creates a group, sees who read
// what and adds carol, and a channel, where bob (a subscriber) has no
// composer; at 390 px the list and the conversation are two views.
//
// Run by client-cli/tests/browser.rs, which starts quipd and seeds data,
// with: QUIP_URL, QUIP_SERVER, QUIP_CA, QUIP_BIN, QUIP_CAROL_HOME,
// QUIP_DAVE_HOME, ALICE_PASSWORD, SCREENSHOT (further screenshots are
// written beside it: -group-info, -channel-subscriber, -phone-list,
// -phone-chat). Exits non-zero on the first failed step.

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const url = env('QUIP_URL');
const T = 15000;

function quipAs(home, password, ...args) {
  return execFileSync(env('QUIP_BIN'), args, {
    env: {
      ...process.env,
      QUIP_HOME: home,
      QUIP_SERVER: env('QUIP_SERVER'),
      QUIP_CA: env('QUIP_CA'),
      QUIP_PASSWORD: password,
    },
    encoding: 'utf8',
    timeout: T,
  });
}
const quip = (...args) => quipAs(env('QUIP_CAROL_HOME'), 'carol-password-1', ...args);
const dave = (...args) => quipAs(env('QUIP_DAVE_HOME'), 'dave-password-1', ...args);
const shot = (suffix) => env('SCREENSHOT').replace(/\.png$/, `-${suffix}.png`);

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
  // Whether the message whose text is exactly this lies inside the
  // scrolled message box.
  const shown = (t) => {
    const box = document.getElementById('messages').getBoundingClientRect();
    return [...document.querySelectorAll('.msg')].some((m) => {
      const r = m.getBoundingClientRect();
      const text = m.querySelector('.text');
      return text && text.textContent === t && r.height > 0 && r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
    });
  };
  const inView = (page, text) => page.evaluate(shown, text);
  const waitInView = (page, text) => page.waitForFunction(shown, text, { timeout: T });
  const scrollTop = (page) => page.evaluate(() => document.getElementById('messages').scrollTop);
  const check = (ok, what) => { if (!ok) throw new Error(what); };

  step('alice logs in; her unread messages from dave are counted');
  const alice = await open('alice');
  await alice.fill('#username', 'alice');
  await alice.fill('#password', env('ALICE_PASSWORD'));
  await alice.click('#login-button');
  await alice.locator('#app').waitFor({ state: 'visible' });
  await expectText(alice.locator('#me'), 'alice');
  await expectText(chat(alice, 'dave').locator('.unread'), '60');

  step('alice opens dave\'s chat: it opens at the newest message; she pages back through history');
  await chat(alice, 'dave').click();
  await expectText(alice.locator('.msg'), 'dave 60');
  await waitInView(alice, 'dave 60');
  check(await alice.evaluate(() => {
    const b = document.getElementById('messages');
    return b.scrollHeight > b.clientHeight + 500;
  }), 'the message list itself scrolls (not the page)');
  if ((await alice.locator('.msg').count()) !== 50) throw new Error('first page should hold 50 messages');
  await alice.click('#load-earlier');
  await expectText(alice.locator('.msg').first(), 'dave 1');
  if ((await alice.locator('.msg').count()) !== 60) throw new Error('all 60 after paging');
  await alice.locator('#load-earlier').waitFor({ state: 'hidden' });
  await chat(alice, 'dave').locator('.unread').waitFor({ state: 'detached' });

  step('dave writes while alice is scrolled up: no jump; back at the bottom, new ones are followed');
  dave('login', 'dave');
  const reading = await scrollTop(alice);
  check(!(await inView(alice, 'dave 60')), 'alice is scrolled up, reading older messages');
  dave('send', 'alice', 'dave 61');
  await expectText(alice.locator('.msg'), 'dave 61');
  check(!(await inView(alice, 'dave 61')), 'a new message must not pull a reader who scrolled up');
  check(Math.abs((await scrollTop(alice)) - reading) < 2, 'the reader stays where she was');
  await alice.evaluate(() => { const b = document.getElementById('messages'); b.scrollTop = b.scrollHeight; });
  dave('send', 'alice', 'dave 62');
  await waitInView(alice, 'dave 62');

  step('bob registers in a second browser context');
  const bob = await open('bob');
  await bob.fill('#username', 'bob');
  await bob.fill('#password', 'bob-password-1');
  await bob.click('#register-button');
  await expectText(bob.locator('#me'), 'bob');

  step('a username that does not exist is named as such');
  await alice.fill('#new-chat', 'No Such');
  await alice.press('#new-chat', 'Enter');
  await expectText(alice.locator('#new-chat-error'), 'is not a username');
  await alice.fill('#new-chat', 'nosuchuser');
  await alice.press('#new-chat', 'Enter');
  await alice.fill('#composer-input', 'anyone there?');
  await alice.press('#composer-input', 'Enter');
  await expectText(alice.locator('#chat-error'), 'There is no user named "nosuchuser"');
  await alice.locator('.msg.mine[data-status="failed"]', { hasText: 'anyone there?' }).waitFor();

  step('alice starts a chat with bob and sends; the tick shows sent, then delivered');
  await alice.fill('#new-chat', 'bob');
  await alice.press('#new-chat', 'Enter');
  await alice.fill('#composer-input', 'hello bob');
  await alice.press('#composer-input', 'Enter');
  const mine = alice.locator('.msg.mine', { hasText: 'hello bob' });
  await mine.and(alice.locator('[data-status="delivered"], [data-status="read"]')).waitFor();
  await expectText(alice.locator('#chat-subtitle'), 'online');
  await alice.locator('#chat-error').waitFor({ state: 'hidden' });

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
  await waitInView(alice, 'a picture');
  await alice.screenshot({ path: env('SCREENSHOT') });

  step('alice creates a group with bob from the browser; both chat in it');
  await alice.click('#new-group summary');
  await alice.fill('#group-name', 'team');
  await alice.fill('#group-members', 'bob');
  await alice.click('#new-group-form button[type=submit]');
  await expectText(alice.locator('#chat-title'), 'team');
  await expectText(alice.locator('#chat-subtitle'), '2 members');
  await expectText(alice.locator('.msg.system'), 'alice created "team"');
  await alice.fill('#composer-input', 'hi team');
  await alice.press('#composer-input', 'Enter');
  // Unread counts the CREATED event too (the server's count: last seq − read).
  await expectText(chat(bob, 'team').locator('.unread'), '2');
  await chat(bob, 'team').click();
  await expectText(bob.locator('.msg'), 'hi team');
  await alice.locator('.msg.mine[data-status="read"]', { hasText: 'hi team' }).waitFor();

  step('alice sees the group\'s receipts: every member\'s cursors, and who read her message');
  await alice.click('#info-button');
  await expectText(alice.locator('#info-members tr[data-user="bob"] td.read'), '#2');
  await alice.locator('.msg.mine', { hasText: 'hi team' }).click();
  await expectText(alice.locator('#info-message'), 'Message #2: read by: bob');

  step('alice adds carol; bob sees it happen; carol has the group');
  await alice.fill('#add-members', 'carol');
  await alice.press('#add-members', 'Enter');
  await expectText(alice.locator('#info-summary'), '3 members');
  await expectText(bob.locator('.msg.system'), 'alice added carol');
  await expectText(alice.locator('#chat-subtitle'), '3 members');
  await alice.screenshot({ path: shot('group-info') });
  check(quip('chats').includes('group "team" (3 members)'), 'carol lists the group');

  step('alice creates a channel; bob joins by its id, reads posts live, and has no composer');
  await alice.click('#new-group summary');
  await alice.fill('#group-name', 'news');
  await alice.selectOption('#group-kind', 'CHANNEL');
  await alice.click('#new-group-form button[type=submit]');
  await expectText(alice.locator('#chat-title'), 'news');
  const newsId = await chat(alice, 'news').getAttribute('data-chat-id');
  await alice.locator('#composer').waitFor({ state: 'visible' });
  await bob.fill('#new-chat', `chat:${newsId}`);
  await bob.press('#new-chat', 'Enter');
  await expectText(bob.locator('#chat-title'), 'news');
  await bob.locator('#read-only').waitFor({ state: 'visible' });
  await bob.locator('#composer').waitFor({ state: 'hidden' });
  await alice.fill('#composer-input', 'first post');
  await alice.press('#composer-input', 'Enter');
  await expectText(bob.locator('.msg'), 'first post');
  await bob.screenshot({ path: shot('channel-subscriber') });

  step('at 390 px wide the list and the conversation are two views that fit');
  await alice.setViewportSize({ width: 390, height: 844 });
  await chat(alice, 'bob').waitFor({ state: 'hidden' });
  await alice.locator('#composer-input').waitFor({ state: 'visible' });
  for (const sel of ['#composer button[type=submit]', '#composer-input', '#chat-title', '#back']) {
    const b = await alice.locator(sel).boundingBox();
    check(b && b.x >= 0 && b.x + b.width <= 390 && b.y + b.height <= 844, `${sel} fits the screen: ${JSON.stringify(b)}`);
  }
  await alice.click('#back');
  await chat(alice, 'bob').waitFor({ state: 'visible' });
  await alice.locator('#conversation').waitFor({ state: 'hidden' });
  await alice.screenshot({ path: shot('phone-list') });
  await chat(alice, 'bob').click();
  await waitInView(alice, 'a picture');
  const wide = await alice.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 390, `nothing wider than the screen (${wide} px)`);
  await alice.screenshot({ path: shot('phone-chat') });
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
