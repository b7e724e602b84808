// The machine's display socket, opened by the exhibit page as soon as a start
// gives the session's id, before the machine's page is in place: the guest's
// first picture is on its way while the page changes. The display client
// (noVNC, in session.js) takes the socket over; what the server sent before it
// did is handed to it first, in order.
const opened = new Map();

export function displaySocketOpen(path) {
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + window.location.host + path, ["binary"]);
  socket.binaryType = "arraybuffer";
  const early = [];
  const keep = (event) => early.push(event);
  socket.addEventListener("message", keep);
  // noVNC listens through the on* handlers: the first one set is given what came early.
  let handler = null;
  Object.defineProperty(socket, "onmessage", {
    configurable: true,
    get: () => handler,
    set(value) {
      handler = value;
      socket.removeEventListener("message", keep);
      delete socket.onmessage;
      socket.onmessage = value;
      const waiting = early.splice(0);
      // After the client's own set-up (it is made and listened to in one go).
      if (waiting.length) queueMicrotask(() => { for (const event of waiting) value(event); });
    },
  });
  opened.set(path, socket);
  return socket;
}

// The socket opened early for this path, once, while it is still good.
export function displaySocketTake(path) {
  const socket = opened.get(path);
  opened.delete(path);
  if (socket && (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN)) return socket;
  return null;
}

export function displaySocketDrop(path) {
  const socket = opened.get(path);
  opened.delete(path);
  if (socket) socket.close();
}
