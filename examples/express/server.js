// An agent webhook in Express: verifies the relay's signature, streams an LLM's words as NDJSON.
//
// Every caller turn and every text reaches POST /agent as a signed `agent.message` event.
// Words come from any OpenAI-compatible endpoint (OPENAI_BASE_URL), streamed to the relay a
// sentence at a time so the caller hears the first one while the rest is being written. The
// turn count lives in `state`, which the relay hands back as `conversationState` next turn.
// A few phrases show the call controls: "goodbye" hangs up, "operator" (or the key 0)
// transfers, "extension 42" sends those digits as DTMF.
//
//   WEBHOOK_SECRET=whsec_... OPENAI_BASE_URL=http://127.0.0.1:8000/v1 PORT=8090 node server.js

import express from "express";
import OpenAI from "openai";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const SECRET = process.env.WEBHOOK_SECRET ?? "";
if (!SECRET.startsWith("whsec_")) {
  console.error("set WEBHOOK_SECRET to the agent's webhookSecret (whsec_...)");
  process.exit(1);
}
const MODEL = process.env.OPENAI_MODEL ?? "gpt-4o-mini";
const OPERATOR = process.env.OPERATOR_NUMBER ?? "+14155550100";
const SENTENCE_END = /(?<=[.!?])\s+/;
const GOODBYE = /\b(good ?bye|bye|hang up)\b/;

const webhook = new Webhook(SECRET);
// Reads OPENAI_BASE_URL; a local server needs no real key.
const llm = new OpenAI({ apiKey: process.env.OPENAI_API_KEY ?? "not-needed" });

function system(channel, turn) {
  const how = channel === "voice" ? "when spoken on the phone" : "in a text message";
  return (
    "You are Ava, the front desk of the Corner Bistro. Answer in one or two short sentences " +
    `that sound natural ${how}. This is turn ${turn} of the conversation.`
  );
}

// Replies that act on the call; null lets the LLM answer.
function controls(said, keys, channel) {
  const lowered = said.toLowerCase();
  if (GOODBYE.test(lowered)) {
    const goodbye = { text: "Thanks for calling. Goodbye!" };
    return channel === "voice" ? { ...goodbye, hangup: true } : goodbye;
  }
  if (channel !== "voice") return null;
  if (keys === "0" || lowered.includes("operator")) {
    return { text: "Let me put you through to a person.", transfer: OPERATOR };
  }
  if (keys) return { text: `You pressed ${keys}.` };
  const extension = lowered.match(/extension (\d+)/);
  if (extension) return { text: `Dialling extension ${extension[1]}.`, dtmf: extension[1] };
  return null;
}

// The LLM's reply, one sentence per chunk, each marked `interim` (more follows).
async function* fromLlm(event, said, turn) {
  const messages = [{ role: "system", content: system(event.channel, turn) }];
  for (const entry of event.recentHistory ?? []) {
    messages.push({ role: entry.role === "agent" ? "assistant" : "user", content: entry.content });
  }
  messages.push({ role: "user", content: said });
  let pending = "";
  try {
    const stream = await llm.chat.completions.create({
      model: MODEL,
      messages,
      stream: true,
      max_tokens: 200,
    });
    for await (const part of stream) {
      pending += part.choices[0]?.delta?.content ?? "";
      const sentences = pending.split(SENTENCE_END);
      pending = sentences.pop();
      for (const sentence of sentences) yield { text: sentence, interim: true };
    }
  } catch (err) {
    if (!(err instanceof OpenAI.OpenAIError)) throw err;
    pending = "Sorry, I did not catch that. Could you say it again?";
  }
  if (pending.trim()) yield { text: pending.trim(), interim: true };
}

const app = express();
// The signature covers the exact bytes: keep the raw body, parse it only once verified.
app.post("/agent", express.raw({ type: "*/*", limit: "1mb" }), async (req, res) => {
  let event;
  try {
    event = webhook.verify(req.body, req.headers);
  } catch (err) {
    if (!(err instanceof WebhookVerificationError)) throw err;
    return res.status(401).json({ error: "bad signature" });
  }
  if (event.event !== "agent.message") return res.json({}); // nothing to say to other events
  const { data, channel } = event;
  // voice: data.transcript (what speech-to-text heard) or data.dtmf; sms: data.text
  const said = String(data.transcript ?? data.text ?? "");
  const state = event.conversationState ?? {};
  const turn = Number(state.turns ?? 0) + 1;
  const nextState = { ...state, turns: turn };
  const action = controls(said, data.dtmf, channel);
  if (action) return res.json({ ...action, state: nextState });

  res.setHeader("Content-Type", "application/x-ndjson");
  for await (const chunk of fromLlm(event, said, turn)) res.write(JSON.stringify(chunk) + "\n");
  res.end(JSON.stringify({ state: nextState }) + "\n"); // the last line has no "interim"
});

const port = Number(process.env.PORT ?? 8090);
const host = process.env.HOST ?? "127.0.0.1";
app.listen(port, host, (err) => {
  if (err) throw err;
  console.log(`agent webhook listening on http://${host}:${port}/agent`);
});
