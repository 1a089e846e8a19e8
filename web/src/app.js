// Quip's web client: the protocol of spec/protocol.md over the WebSocket
// binding (§19). The protobuf code is generated at build time from the
// schema in protocol/proto (web/build.sh), without eval, so the page runs
// under a strict Content-Security-Policy.
//
// Structure: `Connection` speaks the protocol (Hello, request ids, events,
// reconnects); `App` keeps the chat state and renders it. No framework: the
// DOM is updated by small render functions, and user text only ever goes in
// through textContent.

import protobuf from 'protobufjs/minimal.js';
import Long from 'long';
import { sha256 } from '@noble/hashes/sha2';
import { quip } from '../gen/quip.js';
import { AckTracker } from './tracker.js';

// 64-bit ids and positions stay exact (as decimal strings in decoded objects).
protobuf.util.Long = Long;
protobuf.configure();

const TOKEN_KEY = 'quip.token';
const HISTORY_PAGE = 50;
const TYPING_EVERY_MS = 3000;
// Files are hashed and uploaded in slices: never read whole into memory.
const SLICE = 1 << 20;
const DECODE = { longs: String, enums: String, defaults: true, oneofs: true };

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

/** A protocol error from the server: `code` is the ErrorCode's name. */
class QuipError extends Error {
  constructor(err) {
    super(err.message || err.code);
    this.code = err.code;
    this.retryAfterMs = err.retry_after_ms;
  }
}

/**
 * One WebSocket carrying Quip envelopes: Hello, then requests matched to
 * replies by id; events go to `onEvent`. Reconnects with backoff unless the
 * close says not to.
 */
class Connection {
  constructor(Envelope, { onEvent, onOpen, onClose }) {
    this.Envelope = Envelope;
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onClose = onClose;
    this.nextId = 1;
    this.pending = new Map();
    this.ws = null;
  }

  /** Opens the socket and says Hello; resolves with the Welcome. */
  open(token) {
    return new Promise((resolve, reject) => {
      const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
      const ws = new WebSocket(url, ['quip.v1']);
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      let welcomed = false;
      ws.onopen = () => {
        const hello = { versions: [1], token: token || '', client: 'quip-web/0.1' };
        this.sendRaw({ id: 0, hello });
      };
      ws.onmessage = (m) => {
        const env = this.Envelope.toObject(this.Envelope.decode(new Uint8Array(m.data)), DECODE);
        if (env.body === 'event') {
          this.onEvent(env.event);
          return;
        }
        if (!welcomed) {
          welcomed = true;
          if (env.body === 'welcome') {
            resolve(env.welcome);
            this.onOpen();
          } else {
            reject(new QuipError(env.error || { code: 'UNEXPECTED', message: env.body }));
          }
          return;
        }
        const p = this.pending.get(env.id);
        if (!p) return; // a connection-level error (id 0): the close follows
        this.pending.delete(env.id);
        if (env.body === 'error') p.reject(new QuipError(env.error));
        else p.resolve(env[env.body]);
      };
      ws.onclose = (e) => {
        const gone = new QuipError({ code: 'DISCONNECTED', message: 'connection lost' });
        for (const p of this.pending.values()) p.reject(gone);
        this.pending.clear();
        if (!welcomed) reject(new QuipError({ code: 'CLOSED', message: e.reason || `closed (${e.code})` }));
        if (this.ws === ws) this.onClose(e.code - 4000, e.reason);
      };
    });
  }

  sendRaw(obj) {
    const bytes = this.Envelope.encode(this.Envelope.fromObject(obj)).finish();
    this.ws.send(bytes);
  }

  /** Sends request `name` (the Envelope body field) and awaits its reply. */
  request(name, value) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new QuipError({ code: 'DISCONNECTED', message: 'not connected' }));
    }
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.sendRaw({ id, [name]: value });
    });
  }

  close() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
  }
}

const plural = (n, noun) => `${n} ${noun}${n === 1 ? '' : 's'}`;
const USERNAME = /^[a-z0-9][a-z0-9_.-]{2,31}$/;
const num = (s) => Number(s || 0);
const time = (ms) => new Date(num(ms)).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

/** The chat state, the protocol flows and the rendering. */
class App {
  constructor(Envelope) {
    this.conn = new Connection(Envelope, {
      onEvent: (e) => this.event(e),
      onOpen: () => this.status('Connected'),
      onClose: (code, reason) => this.closed(code, reason),
    });
    this.me = null;
    this.chats = new Map(); // chat_id -> ChatSummary
    this.open = null; // chat_id, or { draft: username }
    this.messages = []; // the open chat's messages, by seq
    this.unsent = []; // own messages not yet acknowledged, resent on reconnect
    this.typing = new Map(); // chat_id -> Map(user -> expiry ms)
    this.presence = new Map(); // user -> Presence
    this.lastTyping = 0;
    this.positions = new AckTracker();
    this.receipts = { DELIVERED: new Map(), READ: new Map() }; // chat_id -> seq to send
    this.backoff = 1000;
    this.mediaUrls = new Map(); // media id -> Promise of an object URL
    // Whether the open conversation follows new messages: true while the
    // user is at (or near) the newest, false once they scroll up.
    this.follow = true;
    this.infoFor = null; // the chat whose info panel is shown
    this.bind();
  }

  bind() {
    $('login-form').addEventListener('submit', (e) => { e.preventDefault(); this.auth('login'); });
    $('register-button').addEventListener('click', () => this.auth('register'));
    $('logout').addEventListener('click', () => this.logout());
    $('new-chat-form').addEventListener('submit', (e) => { e.preventDefault(); this.startChat($('new-chat').value.trim()); });
    $('composer').addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
    $('composer-input').addEventListener('input', () => this.sendTyping());
    $('attach').addEventListener('change', (e) => {
      const file = e.target.files[0];
      e.target.value = '';
      if (file) this.sendFile(file);
    });
    $('load-earlier').addEventListener('click', () => this.loadEarlier());
    document.addEventListener('visibilitychange', () => this.markRead());
    $('messages').addEventListener('scroll', () => { this.follow = this.nearBottom(); });
    $('back').addEventListener('click', () => this.showList());
    $('info-button').addEventListener('click', () => this.toggleInfo());
    $('new-group-form').addEventListener('submit', (e) => { e.preventDefault(); this.createGroup(); });
    $('add-members-form').addEventListener('submit', (e) => { e.preventDefault(); this.addMembers(); });
    $('message-list').addEventListener('click', (e) => {
      const li = e.target.closest('.msg.mine');
      if (li && li.dataset.seq) this.showInfo(li.dataset.seq);
    });
  }

  nearBottom() {
    const box = $('messages');
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  /** Scrolls to the newest message if the conversation follows them. */
  keepAtBottom() {
    if (this.follow) $('messages').scrollTop = $('messages').scrollHeight;
  }

  /** Connection state, shown only while it is not simply "connected" (the
   * badge would cover the header's buttons). */
  status(text, offline = false) {
    $('status').textContent = text;
    $('status').classList.toggle('offline', offline);
    $('status').hidden = text === 'Connected';
  }

  // ---------------------------------------------------------------- session

  async connect() {
    const token = localStorage.getItem(TOKEN_KEY) || '';
    this.status('Connecting…');
    let welcome;
    try {
      welcome = await this.conn.open(token);
    } catch (e) {
      if (token && e.code !== 'CLOSED') {
        // The token was refused (expired, logged out): log in again.
        localStorage.removeItem(TOKEN_KEY);
        return this.connect();
      }
      return; // the close handler schedules a retry
    }
    this.backoff = 1000;
    if (welcome.user) {
      await this.enter(welcome.user);
    } else {
      this.showLogin();
    }
  }

  closed(code, reason) {
    if (code === 10 /* Kicked: closed by the operator; no automatic reconnect (spec §12) */) {
      this.status(`Disconnected by the server's operator${reason ? ': ' + reason : ''}. Reload the page to reconnect.`, true);
      return;
    }
    this.status(`Disconnected${reason ? ': ' + reason : ''}. Reconnecting…`, true);
    const relogin = code === 5 /* LoggedOut */ || code === 9 /* SessionExpired */;
    if (relogin) {
      localStorage.removeItem(TOKEN_KEY);
      this.me = null;
    }
    setTimeout(() => this.connect(), relogin ? 0 : this.backoff);
    this.backoff = Math.min(this.backoff * 2, 15000);
  }

  showLogin() {
    $('app').hidden = true;
    $('login').hidden = false;
    this.status('Connected');
  }

  async auth(kind) {
    const username = $('username').value.trim();
    const password = $('password').value;
    $('login-error').textContent = '';
    try {
      const device_name = `web ${navigator.platform || ''}`.trim();
      const a = await this.conn.request(kind, { username, password, device_name });
      localStorage.setItem(TOKEN_KEY, a.token);
      await this.enter(a.user);
    } catch (e) {
      $('login-error').textContent = e.message;
    }
  }

  async logout() {
    try { await this.conn.request('logout', {}); } catch { /* the close says the rest */ }
    localStorage.removeItem(TOKEN_KEY);
  }

  /** Logged in: load the chat list, catch up on missed events, resend. */
  async enter(user) {
    this.me = user;
    $('me').textContent = user;
    $('login').hidden = true;
    $('app').hidden = false;
    await this.refreshChats();
    await this.syncAll();
    if (this.open && !this.open.draft) await this.openChat(this.open, true);
    for (const m of [...this.unsent]) this.deliver(m);
  }

  async refreshChats() {
    const r = await this.conn.request('chats', {});
    this.chats = new Map(r.chats.map((c) => [c.chat_id, c]));
    this.renderChats();
  }

  /** Fetches what this device missed, page by page, acknowledging it. */
  async syncAll() {
    for (;;) {
      const page = await this.conn.request('sync', { limit: 500 });
      this.positions.server(page.acked);
      this.positions.retained(page.retained_from_pos);
      for (const e of page.events) this.event(e, true);
      if (!page.more || page.events.length === 0) break;
    }
    this.flushAck();
  }

  /** Records a log position (events, send and receipt replies); the
   * contiguous prefix is acknowledged shortly after. A gap that stays
   * (a push lost, or on a lane still behind) is filled by a sync (§9). */
  trackPos(pos) {
    if (!this.positions.observe(pos)) return;
    clearTimeout(this.ackTimer);
    this.ackTimer = setTimeout(() => this.flushAck(), 200);
    if (this.positions.gap() && !this.gapTimer) {
      this.gapTimer = setTimeout(() => {
        this.gapTimer = null;
        if (this.positions.gap()) this.syncAll().catch(() => {});
      }, 2000);
    }
  }

  flushAck() {
    const pos = this.positions.take();
    if (pos !== null) this.conn.request('ack', { pos: pos.toString() }).catch(() => {});
  }

  // ---------------------------------------------------------------- events

  event(e, fromSync = false) {
    this.trackPos(e.pos);
    switch (e.kind) {
      case 'message': return this.onMessage(e.message, fromSync);
      case 'receipt': return this.onReceipt(e.receipt);
      case 'typing': return this.onTyping(e.typing);
      case 'presence': return this.onPresence(e.presence);
      // A channel post: shown live in an open channel like any message.
      case 'advanced': return e.advanced.message ? this.onMessage(e.advanced.message) : this.refreshChats();
      default: return undefined;
    }
  }

  onMessage(m) {
    const chat = this.chats.get(m.chat_id);
    if (!chat) {
      // A chat this client has not seen yet: the list says what it is.
      this.refreshChats();
    } else {
      // Only messages newer than the chat list's count: a sync replays
      // events the list already included.
      if (!chat.last_message || num(m.seq) > num(chat.last_message.seq)) {
        chat.last_message = m;
        const seen = this.isOpen(m.chat_id) && this.visible();
        if (m.sender !== this.me && !seen && num(m.seq) > num(chat.my_read_seq)) {
          chat.unread = String(num(chat.unread) + 1);
        }
      }
      this.renderChats();
    }
    if (m.sender !== this.me) this.queueReceipt('DELIVERED', m.chat_id, m.seq);
    if (this.isOpen(m.chat_id)) {
      this.insert(m);
      // Follows only if the user is at the newest message, not scrolled up.
      this.renderMessages(false);
      this.markRead();
      if (this.infoFor === m.chat_id && m.group_event) this.loadInfo();
    }
    const typing = this.typing.get(m.chat_id);
    if (typing && typing.delete(m.sender)) this.renderTyping();
  }

  onReceipt(r) {
    const chat = this.chats.get(r.chat_id);
    if (!chat) return;
    const seq = r.seq;
    if (r.user === this.me) {
      // My other device read this chat.
      if (r.kind === 'READ' && num(seq) > num(chat.my_read_seq)) {
        chat.my_read_seq = seq;
        if (chat.last_message && num(seq) >= num(chat.last_message.seq)) chat.unread = '0';
        this.renderChats();
      }
      return;
    }
    // Direct chats: the peer's cursors. Groups: cursors reached by everyone.
    if (chat.kind !== 'DIRECT' && !r.everyone) return;
    if (r.kind === 'READ' && num(seq) > num(chat.peer_read_seq)) chat.peer_read_seq = seq;
    if (num(seq) > num(chat.peer_delivered_seq)) chat.peer_delivered_seq = seq;
    if (this.isOpen(r.chat_id)) this.renderMessages(false);
    if (this.infoFor === r.chat_id) this.loadInfo();
  }

  onTyping(t) {
    if (t.user === this.me) return;
    if (!this.typing.has(t.chat_id)) this.typing.set(t.chat_id, new Map());
    const until = Date.now() + (t.expires_in_ms || 5000);
    this.typing.get(t.chat_id).set(t.user, until);
    this.renderTyping();
    setTimeout(() => this.renderTyping(), (t.expires_in_ms || 5000) + 50);
  }

  onPresence(p) {
    this.presence.set(p.user, p);
    this.renderHeader();
  }

  // ---------------------------------------------------------------- receipts

  visible() {
    return document.visibilityState === 'visible';
  }

  isOpen(chatId) {
    return this.open === chatId;
  }

  queueReceipt(kind, chatId, seq) {
    const q = this.receipts[kind];
    if (num(seq) > num(q.get(chatId))) q.set(chatId, seq);
    clearTimeout(this.receiptTimer);
    this.receiptTimer = setTimeout(() => this.flushReceipts(), 100);
  }

  flushReceipts() {
    for (const kind of ['DELIVERED', 'READ']) {
      for (const [chat_id, seq] of this.receipts[kind]) {
        // A READ lands in this user's own log too, for their other devices;
        // this device is told its position here, not pushed it (spec §8).
        this.conn.request('receipt', { chat_id, kind, seq }).then((r) => this.trackPos(r.pos), () => {});
      }
      this.receipts[kind].clear();
    }
  }

  /** Reading the open chat, when the page is visible, marks it read. */
  markRead() {
    if (!this.open || this.open.draft || !this.visible()) return;
    const chat = this.chats.get(this.open);
    const last = this.messages[this.messages.length - 1];
    if (!chat || !last || !last.seq) return;
    if (num(last.seq) > num(chat.my_read_seq)) {
      chat.my_read_seq = last.seq;
      this.queueReceipt('READ', this.open, last.seq);
    }
    if (chat.unread !== '0') {
      chat.unread = '0';
      this.renderChats();
    }
  }

  // ---------------------------------------------------------------- chats

  title(chat) {
    return chat.kind === 'DIRECT' ? chat.peer : chat.name || `chat ${chat.chat_id}`;
  }

  /** The sidebar's input: a username (a direct chat), or chat:ID (join a channel). */
  async startChat(value) {
    if (!value) return undefined;
    $('new-chat-error').textContent = '';
    const id = /^chat:(\d+)$/.exec(value);
    if (id) return this.joinChannel(id[1]);
    const user = value;
    if (!USERNAME.test(user)) {
      $('new-chat-error').textContent = `"${user}" is not a username (3–32 of a-z 0-9 _ . -), nor chat:ID.`;
      return undefined;
    }
    if (user === this.me) {
      $('new-chat-error').textContent = 'That is you: message someone else.';
      return undefined;
    }
    $('new-chat').value = '';
    const existing = [...this.chats.values()].find((c) => c.kind === 'DIRECT' && c.peer === user);
    if (existing) return this.openChat(existing.chat_id);
    this.open = { draft: user };
    this.messages = [];
    this.showConversation();
    $('load-earlier').hidden = true;
    $('expired-note').hidden = true;
    this.renderHeader();
    this.renderMessages(true);
    $('composer-input').focus();
    return undefined;
  }

  /** Subscribes to a channel by its id, then opens it. */
  async joinChannel(chatId) {
    try {
      if (!this.chats.has(chatId)) {
        await this.conn.request('subscribe', { chat_id: chatId });
        await this.refreshChats();
      }
      $('new-chat').value = '';
      await this.openChat(chatId);
    } catch (e) {
      const why = e.code === 'NOT_FOUND' ? `There is no chat:${chatId}.` : e.message;
      $('new-chat-error').textContent = why;
    }
  }

  /** Phone-sized screens show the list or the conversation (CSS); these switch. */
  showConversation() {
    $('conversation').hidden = false;
    $('app').classList.add('in-chat');
    $('chat-error').hidden = true;
  }

  showList() {
    $('app').classList.remove('in-chat');
    this.open = null;
    this.hideInfo();
    this.renderChats();
  }

  async openChat(chatId, keep = false) {
    if (this.open !== chatId) this.hideInfo();
    this.open = chatId;
    if (!keep) this.messages = [];
    this.follow = true;
    this.showConversation();
    this.renderChats();
    this.renderHeader();
    const page = await this.conn.request('history', { chat_id: chatId, limit: HISTORY_PAGE });
    if (this.open !== chatId) return;
    this.messages = [];
    for (const m of page.messages) this.insert(m);
    for (const m of this.unsent) if (m.chat_id === chatId) this.messages.push(m);
    this.showPaging(page);
    this.renderMessages(true);
    this.renderTyping();
    this.markRead();
    await this.loadPresence(chatId);
    $('composer-input').focus();
  }

  /** A direct chat's peer's presence; later changes arrive as events. */
  async loadPresence(chatId) {
    const chat = this.chats.get(chatId);
    if (!chat || chat.kind !== 'DIRECT') return;
    const r = await this.conn.request('presence', { users: [chat.peer] }).catch(() => null);
    if (r) for (const p of r.users) this.presence.set(p.user, p);
    this.renderHeader();
  }

  /**
   * After a history page: "load earlier" while older messages exist, and
   * once the oldest kept one is reached, a note if the server deleted
   * older ones (retention), so a short history does not look like loss.
   */
  showPaging(page) {
    $('load-earlier').hidden = !page.more;
    $('expired-note').hidden = page.more || num(page.retained_from_seq) <= 1;
  }

  async loadEarlier() {
    const chatId = this.open;
    const first = this.messages.find((m) => m.seq);
    if (!first) return;
    const box = $('messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    const page = await this.conn.request('history', { chat_id: chatId, before_seq: first.seq, limit: HISTORY_PAGE });
    if (this.open !== chatId) return;
    for (const m of page.messages) this.insert(m);
    this.showPaging(page);
    this.renderMessages(false);
    box.scrollTop = box.scrollHeight - fromBottom;
  }

  /** Adds a stored message to the open chat, in seq order, once. */
  insert(m) {
    if (this.messages.some((x) => x.seq && x.seq === m.seq)) return;
    const mine = this.messages.findIndex((x) => !x.seq && x.client_msg_id && x.client_msg_id === m.client_msg_id);
    if (mine >= 0) this.messages.splice(mine, 1);
    const at = this.messages.findIndex((x) => !x.seq || num(x.seq) > num(m.seq));
    if (at < 0) this.messages.push(m);
    else this.messages.splice(at, 0, m);
  }

  // ---------------------------------------------------------------- sending

  send() {
    const input = $('composer-input');
    const text = input.value;
    if (!text.trim() || !this.open) return;
    input.value = '';
    const m = {
      client_msg_id: crypto.randomUUID(),
      sender: this.me,
      content: { text },
      sent_at_ms: String(Date.now()),
      seq: null,
      chat_id: this.open.draft ? null : this.open,
      to_user: this.open.draft || '',
    };
    this.unsent.push(m);
    this.messages.push(m);
    this.renderMessages(true);
    this.deliver(m);
  }

  /** Sends (or resends: the client_msg_id makes it idempotent) one message. */
  async deliver(m) {
    const req = { client_msg_id: m.client_msg_id, content: m.content };
    if (m.chat_id) req.chat_id = m.chat_id;
    else req.to_user = m.to_user;
    let r;
    try {
      r = await this.conn.request('send', req);
    } catch (e) {
      if (e.code === 'DISCONNECTED') return; // resent after reconnecting
      this.unsent = this.unsent.filter((x) => x !== m);
      m.failed = e.message;
      if (e.code === 'NOT_FOUND' && m.to_user) {
        m.failed = `There is no user named "${m.to_user}".`;
        if (this.open && this.open.draft === m.to_user) this.chatError(`${m.failed} Check the spelling: nothing was sent.`);
      }
      this.renderMessages(false);
      return;
    }
    this.unsent = this.unsent.filter((x) => x !== m);
    this.trackPos(r.pos); // the sender's own log entry is not pushed to it
    m.seq = r.seq;
    m.chat_id = r.chat_id;
    m.sent_at_ms = r.sent_at_ms;
    if (!this.chats.has(r.chat_id)) {
      await this.refreshChats();
      if (this.open && this.open.draft === m.to_user) {
        this.open = r.chat_id;
        this.renderChats();
        this.renderHeader();
        this.loadPresence(r.chat_id);
      }
    } else {
      const chat = this.chats.get(r.chat_id);
      if (!chat.last_message || num(r.seq) > num(chat.last_message.seq)) chat.last_message = m;
      this.renderChats();
    }
    if (this.isOpen(m.chat_id)) {
      this.messages = this.messages.filter((x) => x !== m);
      this.insert(m);
      this.renderMessages(false);
    }
  }

  chatError(text) {
    $('chat-error').textContent = text;
    $('chat-error').hidden = !text;
  }

  // ---------------------------------------------------------------- groups

  /** Creates a group (with members) or a channel, then opens it. */
  async createGroup() {
    const name = $('group-name').value.trim();
    const kind = $('group-kind').value;
    const members = $('group-members').value.split(/[\s,]+/).filter(Boolean);
    $('new-group-error').textContent = '';
    if (kind === 'CHANNEL' && members.length) {
      $('new-group-error').textContent = 'A channel starts with no members: share its id (Info) and people join.';
      return;
    }
    try {
      const r = await this.conn.request('create_chat', { kind, name, members, client_request_id: crypto.randomUUID() });
      $('group-name').value = '';
      $('group-members').value = '';
      $('new-group').open = false;
      await this.refreshChats();
      await this.openChat(r.info.chat_id);
    } catch (e) {
      $('new-group-error').textContent = e.message;
    }
  }

  async addMembers() {
    const users = $('add-members').value.split(/[\s,]+/).filter(Boolean);
    if (!users.length || !this.infoFor) return;
    $('info-error').textContent = '';
    try {
      await this.conn.request('update_chat', { chat_id: this.infoFor, action: 'ADD_MEMBERS', users });
      $('add-members').value = '';
      await this.refreshChats();
      this.renderHeader();
      await this.loadInfo();
    } catch (e) {
      $('info-error').textContent = e.message;
    }
  }

  toggleInfo() {
    if (this.infoFor) this.hideInfo();
    else this.showInfo(null);
  }

  hideInfo() {
    this.infoFor = null;
    $('chat-info').hidden = true;
  }

  /** The info panel of the open group or channel; `seq`: also who has that message. */
  async showInfo(seq) {
    const chat = this.open && !this.open.draft ? this.chats.get(this.open) : null;
    if (!chat || chat.kind === 'DIRECT') return;
    this.infoFor = chat.chat_id;
    this.infoSeq = seq;
    $('chat-info').hidden = false;
    await this.loadInfo();
  }

  /** Members (and, in a group, each one's delivered and read cursors). */
  async loadInfo() {
    const chatId = this.infoFor;
    if (!chatId) return;
    let info;
    let receipts = null;
    try {
      info = (await this.conn.request('chat_info', { chat_id: chatId })).info;
      if (info.kind === 'GROUP') receipts = await this.conn.request('receipt_detail', { chat_id: chatId });
    } catch (e) {
      $('info-error').textContent = e.message;
      return;
    }
    if (this.infoFor !== chatId) return;
    const chat = this.chats.get(chatId);
    const admins = info.members.filter((m) => m.admin).map((m) => m.user);
    const body = $('info-members').querySelector('tbody');
    body.replaceChildren();
    if (info.kind === 'CHANNEL') {
      $('info-summary').textContent = `Channel "${info.name}": ${plural(num(info.member_count), 'subscriber')}; admins: ${admins.join(', ')}. Others join with chat:${chatId}.`;
      $('info-members').hidden = true;
      $('info-message').hidden = true;
    } else {
      $('info-summary').textContent = `Group "${info.name}": ${plural(num(info.member_count), 'member')} of at most ${info.max_members}.`;
      $('info-members').hidden = false;
      const cursors = new Map(receipts.members.map((r) => [r.user, r]));
      for (const m of info.members) {
        const tr = el('tr');
        tr.dataset.user = m.user;
        const c = cursors.get(m.user) || {};
        tr.append(el('td', '', m.admin ? `${m.user} (admin)` : m.user), el('td', 'delivered', `#${num(c.delivered_seq)}`), el('td', 'read', `#${num(c.read_seq)}`));
        body.append(tr);
      }
      const seq = num(this.infoSeq);
      $('info-message').hidden = !seq;
      if (seq) {
        const others = receipts.members.filter((r) => r.user !== this.me);
        const read = others.filter((r) => num(r.read_seq) >= seq).map((r) => r.user);
        const delivered = others.filter((r) => num(r.read_seq) < seq && num(r.delivered_seq) >= seq).map((r) => r.user);
        const waiting = others.filter((r) => num(r.delivered_seq) < seq).map((r) => r.user);
        const part = (label, who) => (who.length ? `${label}: ${who.join(', ')}` : '');
        $('info-message').textContent = `Message #${seq}: ${[part('read by', read), part('delivered to', delivered), part('not yet delivered to', waiting)].filter(Boolean).join('; ')}.`;
      }
    }
    $('add-members-form').hidden = !(info.kind === 'GROUP' && chat && chat.admin);
  }

  // ---------------------------------------------------------------- media

  /** HTTPS media endpoints (spec §20.4), with this device's token. */
  async api(method, path, body, headers = {}) {
    const token = localStorage.getItem(TOKEN_KEY) || '';
    const r = await fetch(path, { method, body, headers: { Authorization: `Bearer ${token}`, ...headers } });
    if (!r.ok) {
      const e = await r.json().catch(() => ({ code: String(r.status), message: r.statusText }));
      throw new QuipError(e);
    }
    return r;
  }

  /** Hashes, uploads (resuming after a failure) and sends a file. */
  async sendFile(file) {
    if (!this.open) return;
    const status = (t) => { $('upload-status').textContent = t; };
    const target = this.open;
    const caption = $('composer-input').value;
    $('composer-input').value = '';
    try {
      status(`Hashing ${file.name}…`);
      const h = sha256.create();
      for (let at = 0; at < file.size; at += SLICE) {
        h.update(new Uint8Array(await file.slice(at, at + SLICE).arrayBuffer()));
      }
      const hex = [...h.digest()].map((b) => b.toString(16).padStart(2, '0')).join('');
      const decl = { size: file.size, sha256: hex, content_type: file.type || 'application/octet-stream', file_name: file.name };
      let media = null;
      let uploadId = '';
      for (let attempt = 0; !media && attempt < 5; attempt++) {
        const start = await (await this.api('POST', '/v1/uploads', JSON.stringify({ ...decl, upload_id: uploadId }))).json();
        if (start.media) { media = start.media; break; }
        uploadId = start.upload_id;
        status(`Uploading ${file.name} (${Math.round((100 * start.offset) / file.size)}%)…`);
        try {
          const done = await this.api('PUT', `/v1/uploads/${uploadId}`, file.slice(start.offset), { 'Upload-Offset': String(start.offset) });
          media = (await done.json()).media;
        } catch (e) {
          if (e.code !== 'UPLOAD_INCOMPLETE' && !(e instanceof TypeError)) throw e; // else resume
        }
      }
      if (!media) throw new Error('upload did not complete');
      status('');
      const m = {
        client_msg_id: crypto.randomUUID(),
        sender: this.me,
        content: { text: caption, media: { media_id: media.media_id, file_name: file.name } },
        sent_at_ms: String(Date.now()),
        seq: null,
        chat_id: target.draft ? null : target,
        to_user: target.draft || '',
      };
      m.content.media.content_type = decl.content_type;
      this.unsent.push(m);
      if (this.open === target) { this.messages.push(m); this.renderMessages(true); }
      this.deliver(m);
    } catch (e) {
      status(`Could not send ${file.name}: ${e.message}`);
    }
  }

  /** An image inline, anything else as a download link. */
  mediaElement(media) {
    const box = el('div', 'media-box');
    const name = media.file_name || 'file';
    // One fetch per media id: renders reuse the object URL.
    const load = () => {
      if (!this.mediaUrls.has(media.media_id)) {
        const url = this.api('GET', `/v1/media/${media.media_id}`).then(async (r) => URL.createObjectURL(await r.blob()));
        url.catch(() => this.mediaUrls.delete(media.media_id));
        this.mediaUrls.set(media.media_id, url);
      }
      return this.mediaUrls.get(media.media_id);
    };
    if ((media.content_type || '').startsWith('image/')) {
      const img = el('img', 'media');
      img.alt = name;
      img.dataset.mediaId = media.media_id;
      img.addEventListener('load', () => this.keepAtBottom());
      load().then((u) => { img.src = u; }, () => { img.alt = `${name} (unavailable)`; });
      box.append(img);
    } else {
      const a = el('a', 'file', `File: ${name} (${num(media.size)} bytes)`);
      a.href = '#';
      a.addEventListener('click', async (e) => {
        e.preventDefault();
        const link = document.createElement('a');
        link.href = await load();
        link.download = name;
        link.click();
      });
      box.append(a);
    }
    return box;
  }

  sendTyping() {
    if (!this.open || this.open.draft) return;
    const chat = this.chats.get(this.open);
    if (chat && chat.kind === 'CHANNEL') return; // nobody types in a channel
    const now = Date.now();
    if (now - this.lastTyping < TYPING_EVERY_MS) return;
    this.lastTyping = now;
    this.conn.request('typing', { chat_id: this.open }).catch(() => {});
  }

  // ---------------------------------------------------------------- rendering

  renderChats() {
    const list = $('chats');
    list.replaceChildren();
    const chats = [...this.chats.values()].sort(
      (a, b) => num(b.last_message && b.last_message.sent_at_ms) - num(a.last_message && a.last_message.sent_at_ms),
    );
    for (const c of chats) {
      const li = el('li', 'chat');
      li.dataset.chatId = c.chat_id;
      li.dataset.title = this.title(c);
      if (this.isOpen(c.chat_id)) li.classList.add('active');
      li.append(el('span', 'name', this.title(c)));
      const last = c.last_message;
      const preview = last ? (last.group_event ? this.describe(last) : (last.content && last.content.text) || '') : '';
      li.append(el('span', 'preview', preview));
      if (num(c.unread) > 0) li.append(el('span', 'unread', String(num(c.unread))));
      li.addEventListener('click', () => this.openChat(c.chat_id));
      list.append(li);
    }
  }

  renderHeader() {
    if (!this.open) return;
    const chat = this.open.draft ? null : this.chats.get(this.open);
    const peer = this.open.draft || (chat && chat.kind === 'DIRECT' ? chat.peer : null);
    $('chat-title').textContent = this.open.draft || (chat ? this.title(chat) : '');
    const p = peer ? this.presence.get(peer) : null;
    $('presence-dot').hidden = !peer;
    $('presence-dot').classList.toggle('online', Boolean(p && p.online));
    let sub = '';
    if (chat && chat.kind === 'GROUP') sub = plural(num(chat.member_count), 'member');
    else if (chat && chat.kind === 'CHANNEL') sub = plural(num(chat.member_count), 'subscriber');
    else if (p && p.online) sub = 'online';
    else if (p && p.visible && num(p.last_seen_ms) > 0) sub = `last seen ${time(p.last_seen_ms)}`;
    $('chat-subtitle').textContent = sub;
    $('info-button').hidden = !chat || chat.kind === 'DIRECT';
    // Only a channel's admins post; subscribers read.
    const readOnly = Boolean(chat && chat.kind === 'CHANNEL' && !chat.admin);
    $('composer').hidden = readOnly;
    $('read-only').hidden = !readOnly;
  }

  describe(m) {
    const g = m.group_event;
    const users = g.users.join(', ');
    switch (g.kind) {
      case 'CREATED': return `${m.sender} created "${g.name}"`;
      case 'ADDED': return `${m.sender} added ${users}`;
      case 'REMOVED': return `${m.sender} removed ${users}`;
      case 'LEFT': return `${m.sender} left`;
      case 'PROMOTED': return `${m.sender} made ${users} admin`;
      case 'DEMOTED': return `${m.sender} removed ${users} as admin`;
      case 'RENAMED': return `${m.sender} renamed the group to "${g.name}"`;
      default: return `${m.sender}: ${g.kind}`;
    }
  }

  statusOf(m) {
    if (m.failed) return 'failed';
    if (!m.seq) return 'pending';
    const chat = this.chats.get(m.chat_id);
    if (!chat) return 'sent';
    if (num(chat.peer_read_seq) >= num(m.seq)) return 'read';
    if (num(chat.peer_delivered_seq) >= num(m.seq)) return 'delivered';
    return 'sent';
  }

  renderMessages(toBottom) {
    const box = $('messages');
    const list = $('message-list');
    list.replaceChildren();
    const chat = this.open && !this.open.draft ? this.chats.get(this.open) : null;
    for (const m of this.messages) {
      const li = el('li', 'msg');
      if (m.seq) li.dataset.seq = m.seq;
      if (m.group_event) {
        li.classList.add('system');
        li.textContent = this.describe(m);
        list.append(li);
        continue;
      }
      const mine = m.sender === this.me;
      if (mine) li.classList.add('mine');
      if (!mine && chat && chat.kind !== 'DIRECT') li.append(el('div', 'from', m.sender));
      if (m.content && m.content.media && m.content.media.media_id) li.append(this.mediaElement(m.content.media));
      li.append(el('div', 'text', (m.content && m.content.text) || ''));
      const meta = el('div', 'meta', time(m.sent_at_ms));
      if (mine) {
        const status = this.statusOf(m);
        li.dataset.status = status;
        const glyph = { pending: '…', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '⚠' }[status];
        const tick = el('span', 'tick', glyph);
        tick.title = m.failed || status;
        meta.append(tick);
      }
      li.append(meta);
      list.append(li);
    }
    if (toBottom) this.follow = true;
    this.keepAtBottom();
  }

  renderTyping() {
    const now = Date.now();
    const who = [];
    const typing = this.open ? this.typing.get(this.open) : null;
    if (typing) {
      for (const [user, until] of typing) {
        if (until > now) who.push(user);
        else typing.delete(user);
      }
    }
    $('typing').textContent = who.length ? `${who.join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : '';
  }
}

async function main() {
  const app = new App(quip.v1.Envelope);
  window.quipApp = app; // for debugging in the console
  await app.connect();
}

main().catch((e) => {
  $('status').textContent = `Failed to start: ${e.message}`;
  $('status').classList.add('offline');
});
