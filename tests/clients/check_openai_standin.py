"""Talks to the OpenAI stand-in (tests/src/openai/) with the official `openai` Python client,
unchanged, to prove the stand-in speaks the API the client expects: routes, bodies, streaming,
base64 embeddings, error objects and Retry-After.

Usage: python3 check_openai_standin.py BASE_URL API_KEY IMAGE.png EXPECTED_DESCRIPTION
The caller arranges for the first model request to be rate-limited once with a short Retry-After:
the client must wait and retry by itself. Exits non-zero with a message when anything is off.
"""
import base64
import math
import sys

import openai

base, key, image_path, expected = sys.argv[1:5]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=2)

# The first model request meets a 429 with retry-after-ms: the client retries on its own.
batch = client.embeddings.create(model="text-embedding-3-small", input=["a cat on a laptop", "a red car", "a cat"])
assert [d.index for d in batch.data] == [0, 1, 2], batch.data
assert len(batch.data[0].embedding) == 1536
assert abs(math.sqrt(sum(x * x for x in batch.data[0].embedding)) - 1.0) < 1e-4
assert batch.usage.prompt_tokens > 0
# The client asked for base64 above and decoded it; floats must agree.
floats = client.embeddings.create(model="text-embedding-3-small", input="a cat on a laptop", encoding_format="float")
assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, batch.data[0].embedding)) < 1e-6
short = client.embeddings.create(model="text-embedding-3-small", input="a cat", dimensions=256)
assert len(short.data[0].embedding) == 256

ids = [m.id for m in client.models.list()]
assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids, ids
assert client.models.retrieve("gpt-4o").owned_by == "system"

with open(image_path, "rb") as f:
    url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
content = [
    {"type": "text", "text": "Describe this image."},
    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
]
chat = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=300
)
text = chat.choices[0].message.content
assert text == expected, (text, expected)
assert chat.choices[0].finish_reason == "stop" and chat.usage.total_tokens > 0

pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": content}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        pieces.append(c.delta.content or "")
        finish = c.finish_reason or finish
assert "".join(pieces) == expected and finish == "stop" and usage is not None

def fails(exc, code, call):
    try:
        call()
    except exc as e:
        assert e.code == code, (e.code, code, e.body)
        return e
    raise AssertionError(f"expected {exc.__name__}")

fails(openai.NotFoundError, "model_not_found", lambda: client.embeddings.create(model="nope", input="x"))
e = fails(openai.BadRequestError, None, lambda: client.chat.completions.create(
    model="gpt-3.5-turbo", messages=[{"role": "user", "content": content}]))
assert "image_url is only supported" in e.message, e.message
e = fails(openai.BadRequestError, "unsupported_parameter", lambda: client.chat.completions.create(
    model="o4-mini", messages=[{"role": "user", "content": content}], max_tokens=10))
assert e.param == "max_tokens"
wrong = openai.OpenAI(base_url=base, api_key="sk-wrong-key-0000", max_retries=0)
fails(openai.AuthenticationError, "invalid_api_key", lambda: wrong.models.list())
print("openai stand-in ok")
