#!/usr/bin/env bash
# Switch an agent to hosted mode with one PATCH: the built-in LLM answers its calls from the
# system prompt, calls lookup_order (a signed tool.call POST to TOOL_URL) and may end the call.
# Calls in progress keep the mode they started with.
#
#   BASE=http://127.0.0.1:8080 RELAY_KEY=sk_... AGENT_ID=agt_... \
#     TOOL_URL=https://example.com/tools/lookup_order examples/hosted_agent.sh
# (examples/hosted_agent.py does the same PATCH and also serves the tool.)
set -euo pipefail
: "${BASE:=http://127.0.0.1:8080}" "${RELAY_KEY:?a secret key, sk_...}" "${AGENT_ID:?agt_...}"
: "${TOOL_URL:?where lookup_order is served}"

curl -sS --fail-with-body -X PATCH "$BASE/v1/agents/$AGENT_ID" \
  -H "Authorization: Bearer $RELAY_KEY" -H 'Content-Type: application/json' -d @- <<JSON
{
  "voiceMode": "hosted",
  "systemPrompt": "You are Ava from Acme Shop; the caller is {{call.from}}. Answer in one or two short spoken sentences. Use lookup_order for order questions; when the caller is done, say goodbye and call end_call.",
  "greeting": "Hi, this is Ava from Acme Shop. How can I help?",
  "tools": [
    {"name": "lookup_order", "description": "Find the status of an order by its id, like A-17.",
     "parameters": {"type": "object", "properties": {"orderId": {"type": "string"}},
                    "required": ["orderId"]},
     "url": "$TOOL_URL", "timeoutMs": 3000},
    {"name": "end_call"}
  ]
}
JSON
echo
