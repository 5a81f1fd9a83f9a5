"""Drives `edge-coord serve` with the official client libraries, as users do (tests/tests/clients.rs runs it
with the pinned packages scripts/setup.sh installs). Prints one JSON object of what each call returned.

usage: clients.py URL API_KEY MODEL PROMPT
"""
import json
import sys

import ollama
import openai
import pydantic


class City(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # additionalProperties: false in the schema
    name: str = pydantic.Field(max_length=24)
    country: str = pydantic.Field(max_length=24)
    population: int = pydantic.Field(ge=0, le=100_000_000)


url, key, model, prompt = sys.argv[1:5]
out = {}

oa = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
out["models"] = [m.id for m in oa.models.list()]
c = oa.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
out["completion"] = c.choices[0].text
out["completion_usage"] = [c.usage.prompt_tokens, c.usage.completion_tokens]
c = oa.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, n=2)
out["completion_n"] = [[ch.index, ch.text] for ch in c.choices]
messages = [{"role": "user", "content": "What is the capital of France?"}]
r = oa.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
out["chat"] = r.choices[0].message.content
parts = []
for chunk in oa.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
out["chat_streamed"] = "".join(parts)
r = oa.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
)
out["chat_logprobs_text"] = r.choices[0].message.content
out["chat_logprobs"] = [
    [c.token, c.logprob, [t.token for t in c.top_logprobs], [t.logprob for t in c.top_logprobs]]
    for c in r.choices[0].logprobs.content
]
# Structured output as the library sends it (a strict schema made from a pydantic model) and parses it back.
city_messages = [{"role": "user", "content": "Describe the city of Paris."}]
p = oa.chat.completions.parse(
    model=model, messages=city_messages, max_tokens=80, temperature=0, response_format=City
)
out["parsed_city"] = p.choices[0].message.parsed.model_dump()
# A required tool call, read back by the library.
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
r = oa.chat.completions.create(
    model=model, messages=messages, max_tokens=60, temperature=0, tools=[weather], tool_choice="required"
)
call = r.choices[0].message.tool_calls[0]
out["tool_call"] = [r.choices[0].finish_reason, call.function.name, json.loads(call.function.arguments)]
# Embeddings: the library asks for base64 and decodes it; floats when asked.
texts = ["The cat sat on the mat.", "Paris is the capital of France."]
e = oa.embeddings.create(model=model, input=texts)
out["embeddings"] = [d.embedding for d in e.data]
out["embeddings_usage"] = [e.usage.prompt_tokens, e.usage.total_tokens]
e = oa.embeddings.create(model=model, input=texts[0], encoding_format="float", dimensions=32)
out["embedding_short"] = e.data[0].embedding
c = oa.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, frequency_penalty=1.5)
out["completion_penalized"] = c.choices[0].text
try:
    oa.chat.completions.create(model=model, messages=messages, max_tokens=4, logprobs=True, top_logprobs=21)
    out["bad_top_logprobs"] = "accepted"
except openai.BadRequestError as e:
    out["bad_top_logprobs"] = e.status_code
try:
    oa.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=7)
    out["bad_temperature"] = "accepted"
except openai.BadRequestError as e:
    out["bad_temperature"] = e.status_code
try:
    openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    out["wrong_key"] = "accepted"
except openai.AuthenticationError as e:
    out["wrong_key"] = e.status_code

ol = ollama.Client(host=url, headers={"Authorization": "Bearer " + key}, timeout=120)
out["ollama_models"] = [m.model for m in ol.list().models]
g = ol.generate(model=model, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 16})
out["ollama_generate"] = g.response
out["ollama_generate_counts"] = [g.prompt_eval_count, g.eval_count]
g = ol.generate(
    model=model, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 16, "frequency_penalty": 1.5}
)
out["ollama_generate_penalized"] = g.response
r = ol.chat(
    model=model, messages=city_messages, format=City.model_json_schema(), options={"temperature": 0, "num_predict": 80}
)
out["ollama_city"] = City.model_validate_json(r.message.content).model_dump()
out["ollama_embed"] = ol.embed(model=model, input=texts).embeddings
out["ollama_embeddings"] = ol.embeddings(model=model, prompt=texts[1]).embedding
parts = []
for chunk in ol.chat(model=model, messages=messages, options={"temperature": 0, "num_predict": 24}, stream=True):
    parts.append(chunk.message.content)
out["ollama_chat_streamed"] = "".join(parts)
try:
    ol.generate(model="no-such-model", prompt=prompt)
    out["ollama_unknown_model"] = "accepted"
except ollama.ResponseError as e:
    out["ollama_unknown_model"] = e.status_code

print(json.dumps(out))
