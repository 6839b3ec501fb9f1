// The browser shell: xterm.js on a WebSocket to the portal (access/consumers.py).
// Keystrokes go out as binary frames, output comes back as binary frames; text frames are
// JSON: {"type": "resize"} out, {"type": "closed", "reason"} in, just before the server closes.
(() => {
  const box = document.getElementById("terminal");
  if (!box) return;
  const state = document.getElementById("shell-state");
  const reconnectButton = document.getElementById("shell-reconnect");
  const encoder = new TextEncoder();
  // Close codes the server gives a reason for: not retried by themselves.
  const FINAL = new Set([1000, 4000, 4403, 4408, 4503]);

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
    fontSize: 14,
    theme: { background: "#0b0f17" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();

  let socket = null;
  let retries = 0;
  let reason = "";

  function show(text, kind) {
    state.textContent = text;
    state.className = `badge ${kind || ""}`;
  }

  function sendSize() {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    }
  }

  function connect() {
    reason = "";
    reconnectButton.hidden = true;
    box.classList.remove("ended");
    show("Connecting…", "status-pending");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + box.dataset.socket);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      retries = 0;
      show("Connected", "status-running");
      sendSize();
      term.focus();
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        const message = JSON.parse(event.data);
        if (message.type === "closed") reason = message.reason;
        return;
      }
      term.write(new Uint8Array(event.data));
    };
    socket.onclose = (event) => {
      box.classList.add("ended");
      if (!FINAL.has(event.code) && !reason && retries < 5) {
        // A dropped connection (network, a restarted server): try again, backing off.
        retries += 1;
        show(`Disconnected; reconnecting (${retries})…`, "status-pending");
        setTimeout(connect, 500 * 2 ** (retries - 1));
        return;
      }
      show(reason ? `Closed: ${reason}` : "Closed", "status-failed");
      reconnectButton.hidden = false;
    };
  }

  function sendData(data) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  }
  // The phone key row: Esc, Tab, arrows and the symbols a phone keyboard hides; Ctrl applies
  // to the next key typed (Ctrl then c sends Ctrl-C).
  const KEYS = { esc: "\x1b", tab: "\t", up: "\x1b[A", down: "\x1b[B", right: "\x1b[C",
                 left: "\x1b[D", "|": "|", "-": "-" };
  let ctrl = false;
  const ctrlButton = document.querySelector('#shell-keys [data-key="ctrl"]');
  document.querySelectorAll("#shell-keys button").forEach((button) => {
    button.addEventListener("click", () => {
      const key = button.dataset.key;
      if (key === "ctrl") {
        ctrl = !ctrl;
        button.setAttribute("aria-pressed", String(ctrl));
      } else {
        sendData(KEYS[key]);
      }
      term.focus();
    });
  });
  term.onData((data) => {
    if (ctrl && data.length === 1) {
      const code = data.toUpperCase().charCodeAt(0);
      if (code >= 64 && code <= 95) data = String.fromCharCode(code - 64);
      ctrl = false;
      ctrlButton.setAttribute("aria-pressed", "false");
    }
    sendData(data);
  });
  term.onResize(sendSize);
  window.addEventListener("resize", () => fit.fit());

  // Copy and paste: Ctrl+Shift+C / Ctrl+Shift+V, and Ctrl+C copies while text is selected
  // (otherwise it interrupts, as in any terminal). The buttons do the same.
  function copySelection() {
    const text = term.getSelection();
    if (text) navigator.clipboard.writeText(text);
    return Boolean(text);
  }
  function pasteClipboard() {
    navigator.clipboard.readText().then((text) => { if (text) term.paste(text); });
  }
  term.attachCustomKeyEventHandler((event) => {
    if (event.type !== "keydown" || !event.ctrlKey) return true;
    if (event.code === "KeyC" && (event.shiftKey || term.hasSelection())) {
      copySelection();
      term.clearSelection();
      event.preventDefault();
      return false;
    }
    if (event.code === "KeyV" && event.shiftKey) {
      pasteClipboard();
      event.preventDefault();
      return false;
    }
    return true;
  });
  document.getElementById("shell-copy").addEventListener("click", () => {
    copySelection();
    term.focus();
  });
  document.getElementById("shell-paste").addEventListener("click", () => {
    pasteClipboard();
    term.focus();
  });
  reconnectButton.addEventListener("click", () => {
    term.reset();
    retries = 0;
    connect();
  });

  connect();
})();
