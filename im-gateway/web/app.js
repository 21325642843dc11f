// MPIM's web client: the client protocol (docs/client-protocol.md) in WebSocket text frames
// (protobuf JSON), with no build step and nothing fetched from elsewhere.
//
// Layout of this file: helpers; `Link` (the WebSocket, request ids, replies); `Store`
// (conversations, messages, outbox, names); the views (login, lists, chat, group panel);
// start-up.
//
// Every user-supplied string reaches the page through text nodes (`el`, `textContent`),
// never as HTML.
'use strict';

// ---------------------------------------------------------------- helpers

const $ = (id) => document.getElementById(id);

/** Makes an element: `attrs` are properties (`class`, `title`, `onclick`…) or data-*. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/**
 * Replaces `node`'s children with `build()` only when `key` (what they show) changed: a list
 * drawn again under the pointer can split a click between the old element and its copy, and
 * the click is lost. Returns whether it drew.
 */
function redraw(node, key, build) {
  if (node.dataset.drawn === key) return false;
  node.dataset.drawn = key;
  node.replaceChildren(...build());
  return true;
}

function randomHex(bytes) {
  const buf = new Uint8Array(bytes);
  crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
}

function clock(ms) {
  const d = new Date(Number(ms));
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === now.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

const num = (v) => Number(v || 0);

/** A failed request, with the server's code and whether trying again may succeed. */
class Failure extends Error {
  constructor(code, message, retryable) {
    super(message || code);
    this.code = code;
    this.retryable = !!retryable;
  }
}

// ---------------------------------------------------------------- the connection

const CALL_TIMEOUT_MS = 10000;
const PING_EVERY_MS = 30000;

/** The WebSocket: numbered requests, their replies, pushes, and its state. */
class Link {
  constructor(handlers) {
    this.handlers = handlers; // { push(message), opened(), closed() }
    this.ws = null;
    this.nextId = 1;
    this.waiting = new Map();
    this.pinger = null;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Opens the socket; resolves when it is open, rejects when it cannot be. */
  connect() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      return this.open ? Promise.resolve() : this.opening;
    }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    this.ws = ws;
    this.opening = new Promise((resolve, reject) => {
      ws.onopen = () => {
        this.pinger = setInterval(() => this.call('ping', {}).catch(() => {}), PING_EVERY_MS);
        resolve();
        this.handlers.opened();
      };
      ws.onmessage = (event) => this.receive(event.data);
      ws.onclose = () => {
        reject(new Failure('UNAVAILABLE', 'cannot reach the server', true));
        this.closed(ws);
      };
    });
    return this.opening;
  }

  /** Closes the socket (the close handler runs as for any close). */
  close() {
    if (this.ws) this.ws.close();
  }

  closed(ws) {
    if (this.ws !== ws) return;
    this.ws = null;
    clearInterval(this.pinger);
    for (const { reject, timer } of this.waiting.values()) {
      clearTimeout(timer);
      reject(new Failure('UNAVAILABLE', 'connection lost', true));
    }
    this.waiting.clear();
    this.handlers.closed();
  }

  /** Sends `command` with `body`; resolves with the reply's body. */
  call(command, body, timeoutMs = CALL_TIMEOUT_MS) {
    if (!this.open) {
      return Promise.reject(new Failure('UNAVAILABLE', 'not connected', true));
    }
    const id = String(this.nextId++);
    const ws = this.ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Failure('DEADLINE_EXCEEDED', 'no reply in time', true));
        // The server answers every request: silence means the connection is dead even if
        // the socket has not noticed (a frozen server, a dropped route). Leave it now;
        // the browser may take long to report the close of a socket nobody answers.
        if (this.ws === ws) {
          ws.close();
          this.closed(ws);
        }
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ id, [command]: body }));
    });
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    const id = message.id || '0';
    if (id === '0') {
      if (message.error) console.warn('server:', message.error.message);
      else this.handlers.push(message);
      return;
    }
    const waiter = this.waiting.get(id);
    if (!waiter) return;
    this.waiting.delete(id);
    clearTimeout(waiter.timer);
    if (message.error) {
      const e = message.error;
      waiter.reject(new Failure(e.code || 'UNKNOWN', e.message, e.retryable));
    } else {
      const [, body] = Object.entries(message).find(([k]) => k !== 'id') || [null, {}];
      waiter.resolve(body || {});
    }
  }
}

// ---------------------------------------------------------------- state

const PAGE = 50;
const TYPING_SHOWN_MS = 4000;
const TYPING_SENT_EVERY_MS = 3000;

const state = {
  me: null, // { userId, name }
  loggedIn: false,
  convs: new Map(), // conversation id → conversation (see `conversation`)
  names: new Map(), // user id → display name
  groups: new Map(), // group id → GroupInfo
  friends: [], // UserProfile
  online: new Map(), // user id → bool
  outbox: new Map(), // client msg id → unacknowledged own message
  open: null, // the open conversation's id
  typing: new Map(), // conversation id → Map(user id → shown until, ms)
  typingSentAt: 0,
  backoffMs: 200,
  panelGroup: null, // the group whose panel is shown
};

const deviceId = localStorage.getItem('mpim.device') || `web-${randomHex(8)}`;
localStorage.setItem('mpim.device', deviceId);

const link = new Link({
  push: (message) => onPush(message),
  opened: () => showLinkState(),
  closed: () => onClosed(),
});

function nameOf(userId) {
  return state.names.get(String(userId)) || `user ${userId}`;
}

function remember(profile) {
  if (profile && profile.userId) {
    state.names.set(profile.userId, profile.nickname || profile.name || `user ${profile.userId}`);
  }
}

/** Fetches the names of the users among `ids` not known yet. */
async function learnNames(ids) {
  const unknown = [...new Set(ids.map(String))].filter((id) => id !== '0' && !state.names.has(id));
  if (unknown.length === 0) return;
  const reply = await link.call('getProfiles', { userIds: unknown });
  (reply.profiles || []).forEach(remember);
}

function directId(a, b) {
  const [x, y] = [BigInt(a), BigInt(b)];
  return x < y ? `d:${x}:${y}` : `d:${y}:${x}`;
}

/** The conversation `id`, made empty when first seen. */
function conversation(id) {
  let conv = state.convs.get(id);
  if (conv) return conv;
  const [kind, a, b] = id.split(':');
  conv = {
    id,
    kind: kind === 'g' ? 'GROUP' : 'DIRECT',
    peer: kind === 'd' ? (a === state.me.userId ? b : a) : null,
    group: kind === 'g' ? a : null,
    messages: new Map(), // seq → ChatMessage
    bySeqOfId: new Map(), // msg id → seq
    loaded: false, // history loaded from minSeq to maxSeq without holes
    loading: false,
    minSeq: 1,
    maxSeq: 0,
    readSeq: 0,
    peerReadSeq: 0,
    unread: 0,
    last: null, // the newest text message known, for the list
  };
  state.convs.set(id, conv);
  return conv;
}

function title(conv) {
  if (conv.kind === 'GROUP') {
    const group = state.groups.get(conv.group);
    return group ? group.name : `group ${conv.group}`;
  }
  return nameOf(conv.peer);
}

/** Adds a message (or a recall or edit event) of `conv`; returns whether it was new. */
function ingest(conv, m) {
  const seq = num(m.seq);
  const fresh = !conv.messages.has(seq);
  const kind = m.kind || 'TEXT';
  if (kind === 'RECALL' || kind === 'EDIT') {
    conv.messages.set(seq, { ...m, hidden: true });
    const target = conv.messages.get(conv.bySeqOfId.get(m.refMsgId));
    if (target && kind === 'RECALL') Object.assign(target, { recalled: true, body: '' });
    if (target && kind === 'EDIT') Object.assign(target, { edited: true, body: m.body });
  } else {
    conv.messages.set(seq, m);
    conv.bySeqOfId.set(m.msgId, seq);
  }
  if (seq > conv.maxSeq) conv.maxSeq = seq;
  if (kind === 'TEXT' && (!conv.last || num(conv.last.seq) <= seq)) conv.last = m;
  if (conv.last && kind !== 'TEXT' && conv.last.msgId === m.refMsgId) {
    conv.last = conv.messages.get(conv.bySeqOfId.get(m.refMsgId)) || conv.last;
  }
  return fresh;
}

/** Syncs `conv` forward from `after` to its end. */
async function syncForward(conv, after) {
  let cursor = after;
  for (;;) {
    const reply = await link.call('sync', { conversationId: conv.id, afterSeq: String(cursor), limit: 200 });
    const messages = reply.messages || [];
    await learnNames(messages.map((m) => m.senderId));
    messages.forEach((m) => ingest(conv, m));
    if (messages.length > 0) cursor = num(messages[messages.length - 1].seq);
    if (!reply.hasMore || messages.length === 0) break;
  }
}

/** Loads the newest page of `conv` and everything after it. */
async function loadConversation(conv) {
  if (conv.loaded || conv.loading) return;
  conv.loading = true;
  try {
    const after = Math.max(0, conv.maxSeq - PAGE);
    await syncForward(conv, after);
    conv.minSeq = after + 1;
    conv.loaded = true;
  } finally {
    conv.loading = false;
  }
}

/** Loads the page before the oldest message shown. */
async function loadOlder(conv) {
  if (!conv.loaded || conv.loading || conv.minSeq <= 1) return;
  conv.loading = true;
  try {
    const after = Math.max(0, conv.minSeq - 1 - PAGE);
    const reply = await link.call('sync', {
      conversationId: conv.id,
      afterSeq: String(after),
      limit: conv.minSeq - 1 - after,
    });
    const messages = reply.messages || [];
    await learnNames(messages.map((m) => m.senderId));
    messages.forEach((m) => ingest(conv, m));
    conv.minSeq = after + 1;
  } finally {
    conv.loading = false;
  }
}

async function refreshConversations() {
  const reply = await link.call('listConversations', {});
  const list = reply.conversations || [];
  await learnNames(list.map((c) => c.peerId).filter(Boolean));
  for (const summary of list) {
    const conv = conversation(summary.conversationId);
    const lastSeq = num(summary.lastSeq);
    if (conv.loaded && lastSeq > conv.maxSeq) await syncForward(conv, conv.maxSeq);
    if (!conv.loaded && lastSeq > conv.maxSeq) conv.maxSeq = lastSeq;
    if (summary.lastMessage && (!conv.last || num(conv.last.seq) < num(summary.lastMessage.seq))) {
      conv.last = summary.lastMessage;
    }
    conv.readSeq = Math.max(conv.readSeq, num(summary.readSeq));
    // How far the peer read: "read" marks hold after a reload, before any receipt comes.
    conv.peerReadSeq = Math.max(conv.peerReadSeq, num(summary.peerReadSeq));
    conv.unread = num(summary.unread);
  }
  const open = state.convs.get(state.open);
  if (open) await markRead(open);
}

async function markRead(conv) {
  if (document.hidden || state.open !== conv.id || conv.maxSeq <= conv.readSeq) {
    render();
    return;
  }
  const seq = conv.maxSeq;
  conv.readSeq = seq;
  conv.unread = 0;
  render();
  try {
    const reply = await link.call('markRead', { conversationId: conv.id, seq: String(seq) });
    conv.readSeq = Math.max(conv.readSeq, num(reply.readSeq));
  } catch (e) {
    console.warn('mark read:', e.message);
  }
}

// ---------------------------------------------------------------- pushes

async function onPush(message) {
  try {
    if (message.message) await onMessage(message.message);
    else if (message.recalled) await onMessage(message.recalled.event);
    else if (message.edited) await onMessage(message.edited.event);
    else if (message.readReceipt) onReadReceipt(message.readReceipt);
    else if (message.typing) onTyping(message.typing);
    else if (message.friendRequested) await onFriendRequested(message.friendRequested);
    else if (message.friendResponded) await onFriendResponded(message.friendResponded);
    else if (message.presence) {
      state.online.set(message.presence.userId, !!message.presence.online);
      render();
    } else if (message.kicked) endSession(`Logged out: ${message.kicked.reason || 'session ended'}`);
    else if (message.goAway) {
      state.backoffMs = 200;
      link.close();
    }
  } catch (e) {
    console.warn('push:', e.message);
  }
}

/** A pushed message or event: shown in seq order, a gap synced first, duplicates dropped. */
async function onMessage(m) {
  const conv = conversation(m.conversationId);
  await learnNames([m.senderId]);
  if (conv.kind === 'GROUP' && !state.groups.has(conv.group)) refreshGroups().catch(() => {});
  const seq = num(m.seq);
  const fresh = seq > conv.maxSeq;
  if (seq <= conv.maxSeq && conv.loaded) {
    // Held already (a duplicate), or an older page not loaded yet.
    if (!conv.messages.has(seq) && seq >= conv.minSeq) ingest(conv, m);
  } else if (conv.loaded && seq > conv.maxSeq + 1) {
    await syncForward(conv, conv.maxSeq);
  } else {
    ingest(conv, m);
  }
  const mine = m.senderId === state.me.userId;
  if (fresh && !mine && (m.kind || 'TEXT') === 'TEXT' && seq > conv.readSeq) {
    conv.unread = Math.max(conv.unread, 0) + 1;
    state.typing.get(conv.id)?.delete(m.senderId);
  }
  if (mine) conv.readSeq = Math.max(conv.readSeq, seq);
  await markRead(conv);
}

function onReadReceipt(receipt) {
  const conv = conversation(receipt.conversationId);
  const seq = num(receipt.readSeq);
  if (receipt.userId === state.me.userId) {
    conv.readSeq = Math.max(conv.readSeq, seq);
    if (conv.readSeq >= conv.maxSeq) conv.unread = 0;
  } else {
    conv.peerReadSeq = Math.max(conv.peerReadSeq, seq);
  }
  render();
}

function onTyping(notice) {
  if (notice.userId === state.me.userId) return;
  const conv = conversation(notice.conversationId);
  if (!state.typing.has(conv.id)) state.typing.set(conv.id, new Map());
  state.typing.get(conv.id).set(notice.userId, Date.now() + TYPING_SHOWN_MS);
  learnNames([notice.userId]).catch(() => {}).then(renderTyping);
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

// ---------------------------------------------------------------- sending

function send(conv, text) {
  const clientMsgId = randomHex(16);
  const command = conv.kind === 'GROUP'
    ? ['sendGroup', { groupId: conv.group, clientMsgId, body: text }]
    : ['send', { toUserId: conv.peer, clientMsgId, body: text }];
  const entry = { clientMsgId, convId: conv.id, text, command, state: 'sending', at: Date.now() };
  state.outbox.set(clientMsgId, entry);
  conv.stickToBottom = true;
  conv.last = { body: text, serverTimeMs: String(entry.at), seq: String(conv.maxSeq), senderId: state.me.userId };
  transmit(entry);
}

/**
 * Sends an outbox entry (again). The same client msg id makes a resend safe: the server
 * answers a duplicate with the first ack and stores nothing new.
 */
async function transmit(entry) {
  entry.state = 'sending';
  render();
  if (!link.open) return; // resent after the next resume
  try {
    const ack = await link.call(...entry.command);
    await acked(entry, ack);
  } catch (e) {
    if (e.code === 'UNAVAILABLE' && state.loggedIn) return; // resent after the next resume
    entry.state = 'failed';
    entry.error = e.message;
    render();
  }
}

async function acked(entry, ack) {
  state.outbox.delete(entry.clientMsgId);
  const conv = conversation(ack.conversationId);
  const seq = num(ack.seq);
  const message = {
    msgId: ack.msgId,
    conversationId: ack.conversationId,
    seq: ack.seq,
    senderId: state.me.userId,
    clientMsgId: entry.clientMsgId,
    kind: 'TEXT',
    body: entry.text,
    serverTimeMs: ack.serverTimeMs,
  };
  if (conv.loaded && seq > conv.maxSeq + 1) await syncForward(conv, conv.maxSeq);
  else ingest(conv, message);
  conv.readSeq = Math.max(conv.readSeq, seq);
  await markRead(conv);
}

function resendOutbox() {
  for (const entry of state.outbox.values()) {
    if (entry.state === 'sending') transmit(entry);
  }
}

async function recall(conv, m) {
  try {
    await link.call('recall', { msgId: m.msgId, clientMsgId: randomHex(16) });
    Object.assign(m, { recalled: true, body: '' });
    render();
  } catch (e) {
    alert(`Cannot recall: ${e.message}`);
  }
}

async function edit(conv, m) {
  const text = prompt('Edit message', m.body);
  if (text === null || text.trim() === '' || text === m.body) return;
  try {
    await link.call('edit', { msgId: m.msgId, clientMsgId: randomHex(16), body: text });
    Object.assign(m, { edited: true, body: text });
    render();
  } catch (e) {
    alert(`Cannot edit: ${e.message}`);
  }
}

// ---------------------------------------------------------------- session

/** Someone asked to be friends: the request joins the list at once. */
async function onFriendRequested(request) {
  await learnNames([request.fromUserId]);
  state.requests = (state.requests || []).filter((r) => r.requestId !== request.requestId);
  state.requests.push(request);
  render();
}

/** A request to or from this user was answered (here, on another device, or by the peer). */
async function onFriendResponded(request) {
  await refreshFriends();
  if (request.fromUserId !== state.me.userId) return;
  const who = nameOf(request.toUserId);
  $('friends-status').textContent = request.state === 'ACCEPTED'
    ? `${who} accepted your friend request.`
    : `${who} declined your friend request.`;
}

async function login(name, password, register) {
  await link.connect();
  if (register) await link.call('register', { name, password });
  const session = await link.call('login', { name, password, deviceId, deviceKind: 'WEB' });
  await begin(session);
}

/** A session began (login or resume): keep it, load the lists. */
async function begin(session) {
  const profile = session.profile || {};
  state.me = { userId: session.userId, name: profile.nickname || profile.name || '' };
  remember(profile);
  state.loggedIn = true;
  state.backoffMs = 200;
  localStorage.setItem('mpim.token', session.token);
  localStorage.setItem('mpim.name', state.me.name);
  localStorage.setItem('mpim.user', state.me.userId);
  showMain();
  await Promise.all([refreshGroups(), refreshFriends()]);
  await refreshConversations();
  resendOutbox();
  render();
}

/** (Re)connects with the kept token and catches up on what was missed meanwhile. */
async function resume() {
  const token = localStorage.getItem('mpim.token');
  if (!token) return endSession('');
  try {
    await link.connect();
  } catch {
    return; // the close handler schedules the next try
  }
  try {
    const cursors = [...state.convs.values()]
      .filter((c) => c.loaded)
      .map((c) => ({ conversationId: c.id, lastSeq: String(c.maxSeq) }));
    const resumed = await link.call('resume', { token, deviceKind: 'WEB', cursors });
    for (const behind of resumed.behind || []) {
      const conv = conversation(behind.conversationId);
      if (conv.loaded) await syncForward(conv, num(behind.afterSeq));
    }
    await begin(resumed.session);
  } catch (e) {
    if (e.code === 'UNAUTHENTICATED') endSession('Your session has ended: log in again.');
    else link.close();
  }
}

function onClosed() {
  showLinkState();
  if (!state.loggedIn) return;
  const delay = state.backoffMs * (0.5 + Math.random());
  state.backoffMs = Math.min(state.backoffMs * 2, 10000);
  setTimeout(() => {
    if (state.loggedIn && !link.open) resume();
  }, delay);
}

async function logout() {
  try {
    if (link.open) await link.call('logout', {});
  } catch (e) {
    console.warn('logout:', e.message);
  }
  endSession('');
}

/** Forgets the session and everything loaded for it; shows the login screen. */
function endSession(why) {
  state.loggedIn = false;
  localStorage.removeItem('mpim.token');
  link.close();
  Object.assign(state, { me: null, open: null, friends: [], panelGroup: null });
  for (const key of ['convs', 'names', 'groups', 'online', 'outbox', 'typing']) state[key].clear();
  // The next session draws afresh (what is drawn holds this session's objects).
  for (const node of document.querySelectorAll('[data-drawn]')) delete node.dataset.drawn;
  $('main').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why;
}

// ---------------------------------------------------------------- friends and groups

async function refreshFriends() {
  const [friends, requests, blocked] = await Promise.all([
    link.call('listFriends', {}),
    link.call('listFriendRequests', {}),
    link.call('listBlocked', {}),
  ]);
  state.friends = friends.profiles || [];
  state.friends.forEach(remember);
  state.requests = (requests.requests || []).filter((r) => r.state === 'PENDING');
  state.blocked = blocked.userIds || [];
  await learnNames([...state.requests.map((r) => r.fromUserId), ...state.blocked]);
  const ids = state.friends.map((f) => f.userId);
  if (ids.length > 0) {
    const statuses = await link.call('queryStatus', { userIds: ids });
    for (const s of statuses.statuses || []) state.online.set(s.userId, !!s.online);
  }
  render();
}

async function refreshGroups() {
  const reply = await link.call('myGroups', {});
  state.groups.clear();
  for (const group of reply.groups || []) {
    state.groups.set(group.groupId, group);
    conversation(`g:${group.groupId}`);
  }
  render();
}

/** Runs `action`, showing its outcome (or its error) in the status line `statusId`. */
async function attempt(statusId, action) {
  const status = $(statusId);
  status.textContent = '';
  try {
    const said = await action();
    if (typeof said === 'string') status.textContent = said;
  } catch (e) {
    status.textContent = e.message;
  }
}

async function userNamed(name) {
  const found = await link.call('searchUser', { name });
  const profile = (found.profiles || []).find((p) => p.name === name);
  if (!profile) throw new Failure('NOT_FOUND', `no user named "${name}"`);
  remember(profile);
  return profile;
}

async function addFriend(name) {
  const profile = await userNamed(name);
  await link.call('addFriend', { toUserId: profile.userId });
  return `Friend request sent to ${name}.`;
}

async function respondFriend(request, accept) {
  await link.call('respondFriend', { requestId: request.requestId, accept });
  await refreshFriends();
  return accept ? `${nameOf(request.fromUserId)} is now your friend.` : 'Request declined.';
}

async function createGroup() {
  const name = $('group-name').value.trim();
  const description = $('group-description').value.trim();
  const joinPolicy = $('group-approval').checked ? 'APPROVAL' : 'OPEN';
  const group = await link.call('createGroup', { name, description, joinPolicy });
  $('create-group-form').reset();
  await refreshGroups();
  openConversation(conversation(`g:${group.groupId}`));
  return `Created "${group.name}" (id ${group.groupId}): others join with this id.`;
}

async function joinGroup(groupId) {
  const reply = await link.call('joinGroup', { groupId });
  $('join-group-form').reset();
  if (!reply.joined) return 'Request sent: an admin of the group approves it.';
  await refreshGroups();
  openConversation(conversation(`g:${groupId}`));
  return 'Joined.';
}

// ---------------------------------------------------------------- the group panel

const ROLE_RANK = { MEMBER: 1, ADMIN: 2, OWNER: 3 };

async function allMembers(groupId) {
  const members = [];
  let after = '0';
  for (let page = 0; page < 50; page++) {
    const reply = await link.call('members', { groupId, afterUserId: after, limit: 200 });
    members.push(...(reply.members || []));
    if (!reply.hasMore || !reply.members?.length) break;
    after = reply.members[reply.members.length - 1].userId;
  }
  return members;
}

async function showGroupPanel(groupId) {
  state.panelGroup = groupId;
  $('group-panel').hidden = false;
  $('group-panel-status').textContent = '';
  await attempt('group-panel-status', renderGroupPanel);
}

/** Runs a management action of the open group panel, then shows the panel again. */
function manage(action) {
  return () => attempt('group-panel-status', async () => {
    const said = await action();
    await renderGroupPanel();
    return said;
  });
}

async function renderGroupPanel() {
  const groupId = state.panelGroup;
  if (!groupId) return;
  const [info, members] = await Promise.all([link.call('groupInfo', { groupId }), allMembers(groupId)]);
  state.groups.set(groupId, info);
  await learnNames(members.map((m) => m.userId));
  const me = members.find((m) => m.userId === state.me.userId);
  const myRank = ROLE_RANK[me?.role] || 0;
  $('group-panel-title').textContent = info.name;
  $('group-panel-info').textContent = [
    `Group id ${groupId}`,
    `${members.length} member${members.length === 1 ? '' : 's'}`,
    info.joinPolicy === 'APPROVAL' ? 'joining needs approval' : 'open to join',
    info.description || '',
  ].filter(Boolean).join(' · ');
  $('group-admin').hidden = myRank < ROLE_RANK.ADMIN;
  $('mute-all').checked = !!info.muteAll;
  $('dismiss-group').hidden = myRank < ROLE_RANK.OWNER;
  $('members').replaceChildren(...members.map((m) => memberItem(groupId, m, myRank)));
  if (myRank >= ROLE_RANK.ADMIN) {
    const requests = (await link.call('listJoinRequests', { groupId })).requests || [];
    await learnNames(requests.map((r) => r.userId));
    $('join-requests').replaceChildren(...requests.map((r) => el('li', {},
      el('span', { class: 'name' }, nameOf(r.userId), r.message ? ` — ${r.message}` : ''),
      el('button', { class: 'small approve', onclick: manage(() => respondJoin(r, true)) }, 'Approve'),
      el('button', { class: 'small secondary', onclick: manage(() => respondJoin(r, false)) }, 'Reject'))));
  }
  render();
}

async function respondJoin(request, accept) {
  await link.call('respondJoin', { groupId: request.groupId, userId: request.userId, accept });
  return accept ? `${nameOf(request.userId)} joined.` : 'Request rejected.';
}

function memberItem(groupId, m, myRank) {
  const rank = ROLE_RANK[m.role] || 0;
  const muted = num(m.mutedUntilMs) > Date.now();
  const them = { groupId, userId: m.userId };
  const item = el('li', { 'data-user': m.userId },
    el('span', { class: `dot${state.online.get(m.userId) ? ' on' : ''}` }),
    el('span', { class: 'name' }, nameOf(m.userId)),
    el('span', { class: 'role' }, (m.role || 'MEMBER').toLowerCase(), muted ? ' · muted' : ''));
  if (m.userId === state.me.userId || rank >= myRank || myRank < ROLE_RANK.ADMIN) return item;
  if (myRank === ROLE_RANK.OWNER) {
    const role = rank === ROLE_RANK.ADMIN ? 'MEMBER' : 'ADMIN';
    item.append(el('button', {
      class: 'link',
      onclick: manage(async () => {
        await link.call('setRole', { ...them, role });
        return `${nameOf(m.userId)} is now ${role.toLowerCase()}.`;
      }),
    }, role === 'ADMIN' ? 'make admin' : 'make member'));
  }
  item.append(
    el('button', {
      class: 'link',
      onclick: manage(async () => {
        if (muted) await link.call('unmute', them);
        else await link.call('mute', { ...them, untilMs: String(Date.now() + 10 * 60 * 1000) });
        return muted ? 'Unmuted.' : 'Muted for 10 minutes.';
      }),
    }, muted ? 'unmute' : 'mute 10 min'),
    el('button', {
      class: 'link',
      onclick: manage(async () => {
        await link.call('kick', them);
        return `${nameOf(m.userId)} was removed.`;
      }),
    }, 'remove'));
  return item;
}

async function inviteToGroup(name) {
  const profile = await userNamed(name);
  await link.call('invite', { groupId: state.panelGroup, userIds: [profile.userId] });
  $('invite-form').reset();
  return `${name} was added.`;
}

async function leaveGroup(dismiss) {
  const groupId = state.panelGroup;
  const what = dismiss ? 'Dismiss this group for everyone?' : 'Leave this group?';
  if (!confirm(what)) return;
  await link.call(dismiss ? 'dismissGroup' : 'leaveGroup', { groupId });
  closeGroupPanel();
  state.convs.delete(`g:${groupId}`);
  if (state.open === `g:${groupId}`) state.open = null;
  await refreshGroups();
}

function closeGroupPanel() {
  state.panelGroup = null;
  $('group-panel').hidden = true;
}

// ---------------------------------------------------------------- views

function showMain() {
  $('login').hidden = true;
  $('main').hidden = false;
  $('me').textContent = state.me.name;
  showLinkState();
}

function showLinkState() {
  const node = $('link-state');
  node.textContent = link.open ? 'online' : 'reconnecting…';
  node.className = `state ${link.open ? 'online' : 'offline'}`;
}

let renderQueued = false;

/** Draws everything on the next frame (many changes in one turn draw once). */
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (!state.loggedIn) return;
    renderConversations();
    renderChat();
    renderFriends();
    renderGroups();
    renderTyping();
  });
}

function preview(conv) {
  const m = conv.last;
  if (!m) return '';
  const who = m.senderId === state.me.userId ? 'You: ' : conv.kind === 'GROUP' ? `${nameOf(m.senderId)}: ` : '';
  return who + (m.recalled ? 'message recalled' : m.body || '');
}

function renderConversations() {
  const convs = [...state.convs.values()]
    .filter((c) => c.last || c.kind === 'GROUP' || c.id === state.open)
    .sort((a, b) => num(b.last?.serverTimeMs) - num(a.last?.serverTimeMs));
  $('no-conversations').hidden = convs.length > 0;
  const key = JSON.stringify(convs.map((c) => [c.id, title(c), preview(c), c.last?.serverTimeMs,
    c.unread, c.id === state.open, state.online.get(c.peer)]));
  redraw($('conversations'), key, () => convs.map((conv) => el('li', {
    class: `conversation${conv.id === state.open ? ' open' : ''}`,
    'data-conv': conv.id,
    'data-title': title(conv),
    onclick: () => openConversation(conv),
  },
  conv.kind === 'DIRECT' ? el('span', { class: `dot${state.online.get(conv.peer) ? ' on' : ''}` }) : null,
  el('span', { class: 'text' },
    el('span', { class: 'name' }, title(conv)),
    el('span', { class: 'preview' }, preview(conv))),
  conv.last ? el('span', { class: 'time' }, clock(conv.last.serverTimeMs)) : null,
  conv.unread > 0 && conv.id !== state.open ? el('span', { class: 'badge unread' }, conv.unread) : null)));
}

function messageItem(conv, m) {
  const mine = m.senderId === state.me.userId;
  const text = m.recalled ? 'message recalled' : m.body;
  let status = null;
  if (mine && !m.recalled) {
    const read = conv.kind === 'DIRECT' && num(m.seq) <= conv.peerReadSeq;
    status = el('span', { class: `status ${read ? 'read' : 'sent'}` }, read ? 'read' : 'sent');
  }
  return el('div', {
    class: `message${mine ? ' mine' : ''}${m.recalled ? ' recalled' : ''}`,
    'data-seq': m.seq,
    'data-msg-id': m.msgId,
  },
  !mine && conv.kind === 'GROUP' ? el('span', { class: 'from' }, nameOf(m.senderId)) : null,
  el('div', { class: 'bubble' }, text),
  el('div', { class: 'meta' },
    el('span', {}, clock(m.serverTimeMs)),
    m.edited && !m.recalled ? el('span', {}, 'edited') : null,
    status,
    mine && !m.recalled ? el('button', { class: 'link', onclick: () => edit(conv, current(conv, m)) }, 'edit') : null,
    mine && !m.recalled ? el('button', { class: 'link', onclick: () => recall(conv, current(conv, m)) }, 'recall') : null));
}

/** The message as `conv` holds it now (a sync may have replaced the object drawn). */
function current(conv, m) {
  return conv.messages.get(num(m.seq)) || m;
}

function pendingItem(entry) {
  const failed = entry.state === 'failed';
  return el('div', { class: 'message mine pending', 'data-client-msg-id': entry.clientMsgId },
    el('div', { class: 'bubble' }, entry.text),
    el('div', { class: 'meta' },
      el('span', { class: `status ${entry.state}`, title: entry.error || '' },
        failed ? `failed: ${entry.error || 'not sent'}` : 'sending…'),
      failed ? el('button', { class: 'link retry', onclick: () => transmit(entry) }, 'retry') : null));
}

function renderChat() {
  const conv = state.convs.get(state.open);
  $('main').classList.toggle('chatting', !!conv);
  for (const id of ['messages', 'composer']) $(id).hidden = !conv;
  $('empty-chat').hidden = !!conv;
  if (!conv) {
    $('chat-title').textContent = '';
    $('chat-subtitle').textContent = '';
    $('members-button').hidden = true;
    return;
  }
  $('chat-title').textContent = title(conv);
  const group = state.groups.get(conv.group);
  $('chat-subtitle').textContent = conv.kind === 'GROUP'
    ? `group ${conv.group}${group ? ` · ${group.memberCount} members` : ''}`
    : state.online.get(conv.peer) ? 'online' : 'offline';
  $('members-button').hidden = conv.kind !== 'GROUP';

  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const seqs = [...conv.messages.keys()].sort((a, b) => a - b);
  const pending = [...state.outbox.values()].filter((entry) => entry.convId === conv.id);
  const key = JSON.stringify([conv.id, conv.loaded, conv.loading, conv.minSeq, conv.peerReadSeq,
    seqs.map((seq) => {
      const m = conv.messages.get(seq);
      return [seq, m.hidden, m.body, m.recalled, m.edited, nameOf(m.senderId)];
    }),
    pending.map((entry) => [entry.clientMsgId, entry.state, entry.error])]);
  if (redraw(box, key, () => messageItems(conv, seqs, pending)) || conv.stickToBottom) {
    box.scrollTop = atBottom || conv.stickToBottom ? box.scrollHeight : box.scrollHeight - fromBottom;
  }
  conv.stickToBottom = false;
}

function messageItems(conv, seqs, pending) {
  const items = [];
  if (conv.loaded && conv.minSeq > 1) items.push(el('div', { class: 'more' }, conv.loading ? 'loading…' : 'scroll up for older messages'));
  if (conv.loaded && conv.minSeq <= 1) items.push(el('div', { class: 'more' }, 'the beginning of this conversation'));
  for (const seq of seqs) {
    const m = conv.messages.get(seq);
    if (!m.hidden) items.push(messageItem(conv, m));
  }
  for (const entry of pending) items.push(pendingItem(entry));
  return items;
}

function renderTyping() {
  const now = Date.now();
  const who = [...(state.typing.get(state.open) || new Map()).entries()]
    .filter(([, until]) => until > now)
    .map(([userId]) => nameOf(userId));
  $('typing').textContent = who.length === 0 ? '' : `${who.join(', ')} ${who.length === 1 ? 'is' : 'are'} typing…`;
}

function renderFriends() {
  const requests = state.requests || [];
  const count = $('request-count');
  count.hidden = requests.length === 0;
  count.textContent = requests.length;
  const names = (ids) => JSON.stringify(ids.map((id) => [id, nameOf(id), state.online.get(id)]));
  redraw($('friend-requests'), JSON.stringify(requests.map((r) => [r.requestId, nameOf(r.fromUserId), r.message])), () => requests.map((r) => el('li', { 'data-user': r.fromUserId },
    el('span', { class: 'name' }, nameOf(r.fromUserId), r.message ? ` — ${r.message}` : ''),
    el('button', { class: 'small accept', onclick: () => attempt('friends-status', () => respondFriend(r, true)) }, 'Accept'),
    el('button', { class: 'small secondary', onclick: () => attempt('friends-status', () => respondFriend(r, false)) }, 'Decline'))));
  redraw($('friends'), names(state.friends.map((f) => f.userId)), () => state.friends.map((f) => el('li', { 'data-user': f.userId },
    el('span', { class: `dot${state.online.get(f.userId) ? ' on' : ''}` }),
    el('span', { class: 'name' }, nameOf(f.userId)),
    el('button', { class: 'small chat', onclick: () => openConversation(conversation(directId(state.me.userId, f.userId))) }, 'Chat'),
    el('button', { class: 'link', onclick: () => befriendAction('removeFriend', f.userId, 'Removed.') }, 'remove'),
    el('button', { class: 'link', onclick: () => befriendAction('block', f.userId, 'Blocked: no longer friends, no messages from them.') }, 'block'))));
  redraw($('blocked'), names(state.blocked || []), () => (state.blocked || []).map((id) => el('li', { 'data-user': id },
    el('span', { class: 'name' }, nameOf(id)),
    el('button', { class: 'link', onclick: () => befriendAction('unblock', id, 'Unblocked.') }, 'unblock'))));
}

function befriendAction(command, userId, said) {
  return attempt('friends-status', async () => {
    await link.call(command, { userId });
    await refreshFriends();
    return said;
  });
}

function renderGroups() {
  const groups = [...state.groups.values()].sort((a, b) => a.name.localeCompare(b.name));
  const key = JSON.stringify(groups.map((g) => [g.groupId, g.name, g.memberCount]));
  redraw($('groups'), key, () => groups.map((g) => el('li', {
    class: 'conversation',
    'data-group': g.groupId,
    onclick: () => openConversation(conversation(`g:${g.groupId}`)),
  },
  el('span', { class: 'text' },
    el('span', { class: 'name' }, g.name),
    el('span', { class: 'preview' }, `id ${g.groupId} · ${g.memberCount} members`)))));
}

async function openConversation(conv) {
  state.open = conv.id;
  conv.stickToBottom = true;
  showTab('chats');
  if (state.panelGroup && `g:${state.panelGroup}` !== conv.id) closeGroupPanel();
  render();
  try {
    await loadConversation(conv);
    conv.stickToBottom = true;
    await markRead(conv);
  } catch (e) {
    console.warn('open:', e.message);
  }
  render();
}

function showTab(name) {
  for (const tab of document.querySelectorAll('.tab')) {
    tab.classList.toggle('active', tab.dataset.tab === name);
  }
  for (const panel of ['chats', 'friends', 'groups']) $(`tab-${panel}`).hidden = panel !== name;
  if (name === 'friends' && link.open) refreshFriends().catch(() => {});
  if (name === 'groups' && link.open) refreshGroups().catch(() => {});
}

// ---------------------------------------------------------------- wiring and start-up

function wire() {
  const loginWith = (register) => async (event) => {
    event?.preventDefault();
    const form = $('login-form');
    if (!form.reportValidity()) return;
    $('login-error').textContent = '';
    for (const b of form.querySelectorAll('button')) b.disabled = true;
    try {
      await login($('login-name').value.trim(), $('login-password').value, register);
      $('login-password').value = '';
    } catch (e) {
      $('login-error').textContent = e.message;
      if (!state.loggedIn) link.close();
    } finally {
      for (const b of form.querySelectorAll('button')) b.disabled = false;
    }
  };
  $('login-form').addEventListener('submit', loginWith(false));
  $('register-button').addEventListener('click', loginWith(true));
  $('logout-button').addEventListener('click', logout);
  for (const tab of document.querySelectorAll('.tab')) {
    tab.addEventListener('click', () => showTab(tab.dataset.tab));
  }
  $('back-button').addEventListener('click', () => {
    state.open = null;
    closeGroupPanel();
    render();
  });

  const composer = $('composer-text');
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const conv = state.convs.get(state.open);
    const text = composer.value;
    if (!conv || text.trim() === '') return;
    composer.value = '';
    // A message ends a burst of typing: the next keystroke starts a new one at once.
    state.typingSentAt = 0;
    send(conv, text);
  });
  composer.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  composer.addEventListener('input', () => {
    const now = Date.now();
    if (!state.open || !link.open || now - state.typingSentAt < TYPING_SENT_EVERY_MS) return;
    state.typingSentAt = now;
    link.call('typing', { conversationId: state.open }).catch(() => {});
  });
  $('messages').addEventListener('scroll', () => {
    const conv = state.convs.get(state.open);
    if (conv && $('messages').scrollTop < 40 && conv.minSeq > 1 && !conv.loading) {
      loadOlder(conv).then(render, (e) => console.warn('older:', e.message));
      render();
    }
  });

  const submit = (id, action) => $(id).addEventListener('submit', (event) => {
    event.preventDefault();
    action();
  });
  submit('add-friend-form', () => attempt('friends-status', async () => {
    const said = await addFriend($('add-friend-name').value.trim());
    $('add-friend-form').reset();
    return said;
  }));
  submit('create-group-form', () => attempt('groups-status', createGroup));
  submit('join-group-form', () => attempt('groups-status', () => joinGroup($('join-group-id').value.trim())));
  submit('invite-form', manage(() => inviteToGroup($('invite-user').value.trim())));
  $('mute-all').addEventListener('change', manage(async () => {
    const muted = $('mute-all').checked;
    await link.call('muteAll', { groupId: state.panelGroup, muted });
    return muted ? 'Only admins may speak now.' : 'Everyone may speak.';
  }));
  $('members-button').addEventListener('click', () => {
    const conv = state.convs.get(state.open);
    if (conv?.kind === 'GROUP') showGroupPanel(conv.group);
  });
  $('group-panel-close').addEventListener('click', closeGroupPanel);
  $('leave-group').addEventListener('click', () => attempt('group-panel-status', () => leaveGroup(false)));
  $('dismiss-group').addEventListener('click', () => attempt('group-panel-status', () => leaveGroup(true)));

  document.addEventListener('visibilitychange', () => {
    const conv = state.convs.get(state.open);
    if (conv && !document.hidden) markRead(conv);
  });
}

function start() {
  wire();
  if (localStorage.getItem('mpim.token')) {
    state.me = { userId: localStorage.getItem('mpim.user') || '0', name: localStorage.getItem('mpim.name') || '' };
    state.loggedIn = true;
    showMain();
    resume();
  } else {
    $('login').hidden = false;
  }
}

start();
