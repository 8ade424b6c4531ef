"""Talks to a running `imbed serve` with the official OpenAI and Ollama Python clients, unchanged.

Usage: python3 check_clients.py http://127.0.0.1:PORT
Exits non-zero with a message when anything is off. Installed by scripts/setup.
"""
import math
import sys

import ollama
import openai

base = sys.argv[1]


def close(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return abs(dot - 1.0) < 1e-4


# The OpenAI client asks for base64 by default and decodes it; ask for floats once too.
client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed")
batch = client.embeddings.create(model="imbed", input=["a cat on a laptop", "a red car"])
assert len(batch.data) == 2, batch
assert len(batch.data[0].embedding) == 256, len(batch.data[0].embedding)
assert abs(math.sqrt(sum(x * x for x in batch.data[0].embedding)) - 1.0) < 1e-4
single = client.embeddings.create(model="imbed", input="a cat on a laptop", encoding_format="float")
assert close(batch.data[0].embedding, single.data[0].embedding)

# The Ollama client, as LangChain, LlamaIndex and Chroma's Ollama embedder use it.
o = ollama.Client(host=base)
result = o.embed(model="imbed", input=["a cat on a laptop", "a red car"])
assert len(result.embeddings) == 2
assert close(result.embeddings[0], batch.data[0].embedding)
assert any(m.model == "imbed:latest" for m in o.list().models)
print("clients ok")
