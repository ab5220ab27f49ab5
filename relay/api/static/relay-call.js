// relay-call.js: web calls to a conversation relay agent, from any page. No dependencies.
//
//   import { RelayCall } from "https://relay.example.com/widget/relay-call.js";
//   const call = await RelayCall.start({ joinUrl, token, iceServers });
//   call.addEventListener("transcript", (e) => console.log(e.detail.role, e.detail.text));
//   call.hangup();
//
// or drop in the element (it creates the call with a publishable key, or asks your server):
//
//   <script type="module" src="https://relay.example.com/widget/relay-call.js"></script>
//   <relay-call agent-id="agt_..." publishable-key="pk_..."></relay-call>
//   <relay-call session-url="/my-server/web-call"></relay-call>
//
// Signalling is WHIP (RFC 9725): one SDP offer POSTed to joinUrl with the call's token.
// Events: "state" {state: connecting|connected|ended}, "agentstate" {state: listening|
// thinking|speaking}, "transcript" {role: user|agent, text, final, interrupted},
// "ended" {status, reason, by: agent|caller}, "error" {code, message}.

const MESSAGES = {
  mic_denied: "Microphone access was denied. Allow it in the browser's site settings and try again.",
  no_microphone: "No microphone was found. Connect one and try again.",
  unsupported: "This browser cannot make web calls here (a secure https:// page is required).",
  token_expired: "This call link has expired. Start a new call.",
  token_used: "This call has already been joined. Start a new call.",
  network: "The connection to the call failed. Check your network and try again.",
  server: "The call could not be started.",
};
const GATHER_MS = 3000;

export class RelayCallError extends Error {
  constructor(code, message) {
    super(message || MESSAGES[code] || MESSAGES.server);
    this.name = "RelayCallError";
    this.code = code;
  }
}

function micError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") return new RelayCallError("mic_denied");
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "NotReadableError") {
    return new RelayCallError("no_microphone");
  }
  return new RelayCallError("unsupported", err && err.message);
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MS); // answer with what is gathered: host candidates are quick
  });
}

async function refusal(resp) {
  let body = {};
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  const error = body.error || {};
  if (error.code === "call_token_expired") return new RelayCallError("token_expired");
  if (error.code === "call_token_used") return new RelayCallError("token_used");
  return new RelayCallError("server", error.message || `${MESSAGES.server} (HTTP ${resp.status})`);
}

export class RelayCall extends EventTarget {
  constructor() {
    super();
    this.state = "connecting";
    this.agentState = null;
    this.remoteStream = null;
    this.localStream = null;
    this._pc = null;
    this._session = null;
    this._token = null;
    this._audio = null;
  }

  /** Ask for the microphone, send the offer, and resolve once the relay has answered. */
  static async start({ joinUrl, token, iceServers = [], audioElement = null, onEvent = null }) {
    const call = new RelayCall();
    if (onEvent) {
      for (const type of ["state", "agentstate", "transcript", "ended", "error"]) {
        call.addEventListener(type, (e) => onEvent(type, e.detail));
      }
    }
    await call._start(joinUrl, token, iceServers, audioElement);
    return call;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state });
  }

  async _start(joinUrl, token, iceServers, audioElement) {
    if (!navigator.mediaDevices || !window.RTCPeerConnection) throw new RelayCallError("unsupported");
    try {
      this.localStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      throw micError(err);
    }
    const pc = (this._pc = new RTCPeerConnection({ iceServers }));
    this._token = token;
    for (const track of this.localStream.getAudioTracks()) pc.addTrack(track, this.localStream);
    const channel = pc.createDataChannel("relay");
    channel.onmessage = (e) => this._onMessage(e.data);
    this.remoteStream = new MediaStream();
    this._audio = audioElement || new Audio();
    this._audio.autoplay = true;
    pc.ontrack = (e) => {
      this.remoteStream.addTrack(e.track);
      this._audio.srcObject = this.remoteStream;
      this._audio.play().catch(() => { /* autoplay rules: the page's click already allowed it */ });
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected") this._setState("connected");
      if (pc.connectionState === "failed") this._fail(new RelayCallError("network"));
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      let resp;
      try {
        resp = await fetch(joinUrl, {
          method: "POST",
          headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
          body: pc.localDescription.sdp,
        });
      } catch (err) {
        throw new RelayCallError("network");
      }
      if (resp.status !== 201) throw await refusal(resp);
      this._session = new URL(resp.headers.get("Location"), joinUrl).toString();
      await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    } catch (err) {
      this._close();
      throw err instanceof RelayCallError ? err : new RelayCallError("server", err && err.message);
    }
  }

  _onMessage(data) {
    let event;
    try { event = JSON.parse(data); } catch (_) { return; }
    if (event.type === "transcript") {
      this._emit("transcript", {
        role: event.role, text: event.text, final: !!event.final, interrupted: !!event.interrupted,
      });
    } else if (event.type === "agent_state") {
      this.agentState = event.state;
      this._emit("agentstate", { state: event.state });
    } else if (event.type === "ended") {
      this._end({ status: event.status, reason: event.reason, by: "agent" });
    }
  }

  _fail(error) {
    if (this.state === "ended") return;
    this._emit("error", { code: error.code, message: error.message });
    this._end({ status: "failed", reason: error.code, by: "caller" });
  }

  _close() {
    if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
    if (this._pc) this._pc.close();
    if (this._audio) this._audio.srcObject = null;
  }

  _end(detail) {
    if (this.state === "ended") return;
    this._close();
    this._setState("ended");
    this._emit("ended", detail);
  }

  /** End the call: tell the relay (WHIP DELETE), then close the connection. */
  async hangup() {
    if (this.state === "ended") return;
    const session = this._session;
    this._end({ status: "completed", reason: null, by: "caller" });
    if (session) {
      try {
        await fetch(session, {
          method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${this._token}` },
        });
      } catch (_) { /* the relay notices the silence within seconds anyway */ }
    }
  }
}

/** Create a call with a publishable key: POST {apiBase}/v1/calls. */
export async function createWebCall({ apiBase, publishableKey, agentId, metadata, variables }) {
  let resp;
  try {
    resp = await fetch(`${apiBase.replace(/\/$/, "")}/v1/calls`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${publishableKey}` },
      body: JSON.stringify({ agentId, connectionType: "webrtc", metadata, variables }),
    });
  } catch (err) {
    throw new RelayCallError("network");
  }
  if (resp.status !== 201) throw await refusal(resp);
  return resp.json();
}

const STYLE = `
  :host { display: inline-block; font: 14px system-ui, sans-serif; }
  button { font: inherit; padding: .5em 1.2em; border-radius: 1.2em; border: 0; cursor: pointer;
           background: #0a7; color: #fff; }
  button.live { background: #c33; }
  .state { margin-left: .6em; color: #555; }
  .error { color: #b00; margin: .4em 0; }
  ol { list-style: none; padding: 0; margin: .5em 0; max-height: 16em; overflow-y: auto; }
  li.user { color: #036; } li.agent { color: #063; } li.partial { opacity: .6; }
`;

export class RelayCallElement extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style><button part="button">Start call</button>` +
      `<span class="state" part="state"></span><div class="error" part="error" role="alert"></div>` +
      `<ol part="transcript" aria-live="polite"></ol>`;
    this._button = root.querySelector("button");
    this._state = root.querySelector(".state");
    this._error = root.querySelector(".error");
    this._lines = root.querySelector("ol");
    this._partial = null;
    this.call = null;
    this._button.addEventListener("click", () => (this.call ? this.hangup() : this.start()));
  }

  async _credentials() {
    const sessionUrl = this.getAttribute("session-url");
    if (sessionUrl) {
      let resp;
      try { resp = await fetch(sessionUrl, { method: "POST" }); } catch (err) {
        throw new RelayCallError("network");
      }
      if (!resp.ok) throw await refusal(resp);
      return resp.json();
    }
    if (this.getAttribute("join-url")) {
      return { joinUrl: this.getAttribute("join-url"), token: this.getAttribute("token") };
    }
    return createWebCall({
      apiBase: this.getAttribute("api-base") || new URL(import.meta.url).origin,
      publishableKey: this.getAttribute("publishable-key"),
      agentId: this.getAttribute("agent-id"),
    });
  }

  _show(state) {
    this._state.textContent = state;
    this.setAttribute("state", state);
  }

  _line(role, text, final) {
    let shown = text;
    if (this._partial && this._partial.dataset.role === role) {
      // The agent's words as they are spoken grow one line, which the final line replaces.
      if (!final) shown = this._partial.dataset.text + text;
      this._partial.remove();
      this._partial = null;
    }
    const li = document.createElement("li");
    li.className = `${role}${final ? "" : " partial"}`;
    li.dataset.role = role;
    li.dataset.text = shown;
    li.textContent = `${role === "user" ? "You" : "Agent"}: ${shown}`;
    if (!final) this._partial = li;
    this._lines.append(li);
    this._lines.scrollTop = this._lines.scrollHeight;
  }

  async start() {
    this._error.textContent = "";
    this._button.disabled = true;
    this._show("connecting");
    try {
      const created = await this._credentials();
      this.call = await RelayCall.start({
        joinUrl: created.joinUrl, token: created.token, iceServers: created.iceServers || [],
      });
    } catch (err) {
      this._error.textContent = err.message;
      this._show(err.code || "error");
      this._button.disabled = false;
      this.dispatchEvent(new CustomEvent("error", { detail: { code: err.code, message: err.message } }));
      return;
    }
    const call = this.call;
    call.addEventListener("state", (e) => this._show(e.detail.state));
    call.addEventListener("agentstate", (e) => this._show(e.detail.state));
    call.addEventListener("transcript", (e) => this._line(e.detail.role, e.detail.text, e.detail.final));
    call.addEventListener("error", (e) => (this._error.textContent = e.detail.message));
    call.addEventListener("ended", (e) => {
      this.call = null;
      this._button.textContent = "Start call";
      this._button.classList.remove("live");
      this._show(e.detail.reason ? `ended (${e.detail.reason})` : "ended");
    });
    this._button.textContent = "End call";
    this._button.classList.add("live");
    this._button.disabled = false;
    this.dispatchEvent(new CustomEvent("call", { detail: { call } }));
  }

  async hangup() {
    if (this.call) await this.call.hangup();
  }
}

if (window.customElements && !customElements.get("relay-call")) {
  customElements.define("relay-call", RelayCallElement);
}
