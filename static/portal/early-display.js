// The machine's display socket, opened by the exhibit page as soon as a start
// gives the session's id, before the machine's page is in place. This socket
// speaks the start of RFB itself (the version, no security, a shared ClientInit)
// and asks for the first update in the same breath, in noVNC's own pixel format
// and encodings, so the guest's first picture is on its way while the page changes.
// The display client (noVNC, in session.js) then takes the socket over: it is
// given everything the server sent, from the first byte, and what it says of the
// opening this socket already said is not said twice. A server that speaks
// another version has this socket closed, and noVNC opens its own.
//
// The display client itself is made here too, as soon as its module is there
// (the exhibit page has fetched it while the visitor read): it takes the socket
// over at once and decodes the first picture into a screen element of its own
// while the machine's page is fetched; the page change puts that element in
// place of the new page's screen (displayScreen), and session.js adopts the
// client (displayTake).
const opened = new Map();

const VERSION = "RFB 003.008\n";
const SECURITY_NONE = 1;
// noVNC's SetPixelFormat (32 bits a pixel, depth 24, true colour, red first) and
// SetEncodings (core/rfb.js _sendEncodings at depth 24, its default quality 6
// and compression 2), as noVNC sends them after ServerInit.
const PIXEL_FORMAT = [0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0];
const ENCODINGS = [1, 7, -260, 16, 21, 5, 2, 6, 0, -26, -254, -223, -224, -258, -261, -308, -309,
  -312, -313, -307, 0xc0a1e5ce, -316, 0x574d5664, -239];

function encodingsMessage() {
  const view = new DataView(new ArrayBuffer(4 + 4 * ENCODINGS.length));
  view.setUint8(0, 2);
  view.setUint16(2, ENCODINGS.length);
  ENCODINGS.forEach((encoding, i) => view.setUint32(4 + 4 * i, encoding >>> 0));
  return new Uint8Array(view.buffer);
}

function updateRequest(width, height) {
  const view = new DataView(new ArrayBuffer(10));
  view.setUint8(0, 3);
  view.setUint16(6, width);
  view.setUint16(8, height);
  return new Uint8Array(view.buffer);
}

// Resolves once the first update is asked for (or this socket cannot ask: a
// close), so that what keeps the page busy can wait for it.
export function displaySocketOpen(path) {
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + window.location.host + path, ["binary"]);
  socket.binaryType = "arraybuffer";
  const send = (bytes) => WebSocket.prototype.send.call(socket, bytes);
  const early = [];
  // The whole opening goes at once, as soon as the socket is open: the version,
  // no security, a shared ClientInit, noVNC's pixel format and encodings and a
  // request for the whole screen (QEMU clips it to the screen's size). QEMU reads
  // a client's bytes in order as far as they go, so nothing waits for a round
  // trip: its greeting, security result, ServerInit and first picture come back
  // in one go. Only the version is checked on the way back; another server's
  // socket is closed, and noVNC opens its own.
  let said = 0;
  let greeting = new Uint8Array(0);
  let handedOver = false;
  let asked = null;
  const askedOrNot = new Promise((resolve) => { asked = resolve; });
  socket.addEventListener("close", () => asked());
  socket.addEventListener("open", () => {
    const parts = [new TextEncoder().encode(VERSION), new Uint8Array([SECURITY_NONE, 1]),
      new Uint8Array(PIXEL_FORMAT), encodingsMessage(), updateRequest(0xffff, 0xffff)];
    const opening = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
    let offset = 0;
    for (const part of parts) { opening.set(part, offset); offset += part.length; }
    send(opening);
    said = 14;  // noVNC's version, security type and ClientInit are not said twice
    asked();
  });
  const opening = (event) => {
    early.push(event);
    if (handedOver || greeting.length >= 12) return;
    const bytes = new Uint8Array(event.data);
    const joined = new Uint8Array(greeting.length + bytes.length);
    joined.set(greeting);
    joined.set(bytes, greeting.length);
    greeting = joined;
    if (greeting.length >= 12 && String.fromCharCode(...greeting.subarray(0, 12)) !== VERSION) {
      socket.close();
    }
  };
  socket.addEventListener("message", opening);
  // What noVNC sends of the opening already sent is dropped.
  socket.send = (data) => {
    let bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    if (said > 0) {
      const dropped = Math.min(said, bytes.length);
      said -= dropped;
      bytes = bytes.subarray(dropped);
      if (!bytes.length) return;
    }
    send(bytes);
  };
  // noVNC listens through the on* handlers: the first one set is handed the
  // whole stream so far, in order, once its own set-up is done.
  let handler = null;
  Object.defineProperty(socket, "onmessage", {
    configurable: true,
    get: () => handler,
    set(value) {
      handler = value;
      handedOver = true;
      asked();
      socket.removeEventListener("message", opening);
      delete socket.onmessage;
      socket.onmessage = value;
      const waiting = early.splice(0);
      if (waiting.length) queueMicrotask(() => { for (const event of waiting) value(event); });
    },
  });
  const entry = { socket, asked: askedOrNot, client: null, closed: null, late: false,
    pictured: firstPictureWatch(socket) };
  socket.addEventListener("close", (event) => { entry.closed = { code: event.code, reason: event.reason }; });
  opened.set(path, entry);
  clientStart(path, entry);
  return askedOrNot;
}

// Resolves once the server's first picture has come and the display client has had
// it, and the page has painted: the server's messages counted through the opening
// (version, security types, result, ServerInit and its name), then the picture's
// messages until the server pauses (the first picture comes as one burst; what
// follows comes only as the screen changes). Also on a close.
const PICTURE_PAUSE_MS = 20;

function firstPictureWatch(socket) {
  return new Promise((resolve) => {
    let stage = 0;
    let need = 12;
    let have = new Uint8Array(0);
    let pause = null;
    const seen = (event) => {
      if (typeof event.data === "string") return;
      if (stage < 6) {
        const bytes = new Uint8Array(event.data);
        const joined = new Uint8Array(have.length + bytes.length);
        joined.set(have);
        joined.set(bytes, have.length);
        have = joined;
        while (stage < 6 && have.length >= need) {
          const part = have.subarray(0, need);
          have = have.subarray(need);
          if (stage === 0) { stage = 1; need = 1; }
          else if (stage === 1) { stage = 2; need = part[0] || 1; }
          else if (stage === 2) { stage = 3; need = 4; }
          else if (stage === 3) { stage = 4; need = 24; }
          else if (stage === 4) { stage = 5; need = ((part[20] << 24) | (part[21] << 16) | (part[22] << 8) | part[23]) >>> 0; }
          else { stage = 6; }
        }
        if (stage < 6 || !have.length) return;
      }
      // A part of the picture: the display client handles it in this same task.
      clearTimeout(pause);
      pause = setTimeout(done, PICTURE_PAUSE_MS);
    };
    function done() {
      socket.removeEventListener("message", seen);
      requestAnimationFrame(() => resolve());
    }
    socket.addEventListener("message", seen);
    socket.addEventListener("close", () => resolve());
  });
}

async function clientStart(path, entry) {
  let RFB;
  try {
    ({ default: RFB } = await import("/static/novnc/core/rfb.js"));
  } catch {
    return;
  }
  const { socket } = entry;
  if (entry.late || opened.get(path) !== entry || socket.readyState > WebSocket.OPEN) return;
  const target = document.createElement("div");
  target.id = "screen";  // the machine's page's screen element, which it replaces
  const client = { rfb: null, target, connected: false, disconnected: null };
  client.rfb = new RFB(target, socket, { shared: true });
  client.rfb.addEventListener("connect", () => { client.connected = true; });
  client.rfb.addEventListener("disconnect", (event) => { client.disconnected = event; });
  entry.client = client;
}

// The early client's screen element, for the page change to put in place of the
// new page's; none if the client is not made yet (the page then makes its own).
export function displayScreen(path) {
  const entry = opened.get(path);
  if (!entry) return null;
  entry.late = true;
  return entry.client ? entry.client.target : null;
}

// Resolves once the early client has drawn the machine's first picture (or its
// socket closed): what the page's change lets go first.
export function displayPictured(path) {
  const entry = opened.get(path);
  return entry && entry.client ? entry.pictured : Promise.resolve();
}

// What was opened early for this path, once: the socket while it is still good,
// with the client made on it and the socket's close if it came already.
export function displayTake(path) {
  const entry = opened.get(path);
  opened.delete(path);
  if (!entry) return null;
  entry.late = true;
  const { socket } = entry;
  if (entry.client) return entry;
  if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) return entry;
  return null;
}

export function displaySocketDrop(path) {
  const entry = opened.get(path);
  opened.delete(path);
  if (entry?.client) entry.client.rfb.disconnect();
  else if (entry) entry.socket.close();
}
