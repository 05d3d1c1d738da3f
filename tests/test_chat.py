"""Chat templates (realm/chat.py) against llama-cpp-python's Jinja2ChatFormatter, chat through
the guest against llama.cpp, and the `realm chat` REPL fed through stdin."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from realm import ChatTemplate, ChatTemplateError
from realm.chat import DEFAULT_TIME_LIMIT_S

ROOT = Path(__file__).resolve().parent.parent

# Google's Gemma 3 chat template (Hugging Face tokenizer_config.json); the Gemma 3 GGUF used
# here carries none, so realm refuses to chat with it unless given one.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Whitespace control by trim_blocks/lstrip_blocks, tojson, loop controls, {% generation %},
# strftime_now and a tools variable.
FEATURES_TEMPLATE = """{% for m in messages %}
    {% if m.role == 'stop' %}{% break %}{% endif %}
    {% if m.role == 'skip' %}{% continue %}{% endif %}
<{{ m.role }}>{% generation %}{{ m.content }}{% endgeneration %}</{{ m.role }}>
{% endfor %}
{% if tools %}tools: {{ tools | tojson }}
{{ tools | tojson(indent=2, sort_keys=True) }}{% endif %}
year {{ strftime_now('%Y') }}{{ eos_token if not add_generation_prompt else bos_token }}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "  And 3+3?  \n"}],
    [{"role": "user", "content": "Ünïcödé 日本語 😀 \"quotes\" <tags> {{ not a template }}"}],
]


def reference(template: str, bos: str, eos: str, messages, add_generation_prompt: bool = True, **extra) -> str:
    require("llama_cpp")
    from llama_cpp import llama_chat_format

    fmt = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                                add_generation_prompt=add_generation_prompt)
    return fmt(messages=messages, **extra).prompt


# -- rendering --------------------------------------------------------------------------------------

@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one", "turns", "unicode"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_renders_as_llama_cpp_python(rt, smollm2_path, messages, add_generation_prompt):
    llama_cpp = require("llama_cpp")
    llm = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    bos = llama_cpp.llama_vocab_get_text(vocab, llm.token_bos()).decode()
    eos = llama_cpp.llama_vocab_get_text(vocab, llm.token_eos()).decode()
    want = reference(llm.metadata["tokenizer.chat_template"], bos, eos, messages, add_generation_prompt)
    llm.close()
    assert rt.render_chat(messages, smollm2_path, add_generation_prompt=add_generation_prompt) == want


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one", "turns", "unicode"])
def test_gemma3_template_renders_as_llama_cpp_python(rt, gemma3_path, messages):
    want = reference(GEMMA3_TEMPLATE, "<bos>", "<eos>", messages)
    assert rt.render_chat(messages, gemma3_path, chat_template=GEMMA3_TEMPLATE) == want
    assert want.startswith("<bos><start_of_turn>user\n")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_template_features_render_as_llama_cpp_python(add_generation_prompt):
    messages = [{"role": "user", "content": "a"}, {"role": "skip", "content": "b"},
                {"role": "assistant", "content": "ç"}, {"role": "stop", "content": "d"},
                {"role": "user", "content": "e"}]
    tools = [{"name": "f", "description": "ünï", "parameters": {"b": 1, "a": [1, 2]}}]
    ours = ChatTemplate(FEATURES_TEMPLATE, bos_token="<s>", eos_token="</s>").render(
        messages, add_generation_prompt=add_generation_prompt, tools=tools)
    assert ours == reference(FEATURES_TEMPLATE, "<s>", "</s>", messages, add_generation_prompt, tools=tools)
    assert "<assistant>ç</assistant>" in ours and "<user>e" not in ours and "ünï" in ours


def test_raise_exception_and_the_sandbox():
    roles = [{"role": "assistant", "content": "first"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ChatTemplate(GEMMA3_TEMPLATE).render(roles)
    with pytest.raises(ChatTemplateError):  # the template may not reach Python internals
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render([])
    with pytest.raises(ChatTemplateError):  # nor change the messages
        ChatTemplate("{% set _ = messages.append(1) %}").render([])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for %}")
    with pytest.raises(TypeError):
        ChatTemplate("x").render("not a list of messages")


def test_hostile_template_fails_within_the_default_limits(rt, gemma3_path):
    """A template that would loop for hours, or build a 10 GB text, fails with ChatTemplateError
    within the default limits, before any generation (the tests of the limits: test_chat_limits.py)."""
    hi = [{"role": "user", "content": "Hi"}]
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="time limit"):
        rt.render_chat(hi, gemma3_path, chat_template="{% for a in range(100000) %}{% for b in range(100000) %}"
                                                      "{% endfor %}{% endfor %}")
    assert time.monotonic() - start < DEFAULT_TIME_LIMIT_S + 0.5
    with pytest.raises(ChatTemplateError, match="size limit"):
        rt.chat(hi, gemma3_path, chat_template='{{ "x" * 10**10 }}', max_tokens=1)
    assert rt.render_chat(hi, gemma3_path, chat_template=GEMMA3_TEMPLATE) == reference(GEMMA3_TEMPLATE, "<bos>",
                                                                                     "<eos>", hi)


def test_model_without_template_is_a_clear_error(rt, gemma3_path):
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        rt.chat([{"role": "user", "content": "Hi"}], gemma3_path)
    assert rt.model(gemma3_path).chat_template is None


# -- chatting through the guest ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_chat_reply_equals_llama_cpp_greedy(rt, smollm2_path, gemma3_path, name):
    """The template's text, tokenized without another BOS (as llama-cpp-python's chat handler does),
    continues greedily as llama.cpp continues it."""
    path, template = (smollm2_path, None) if name == "smollm2" else (gemma3_path, GEMMA3_TEMPLATE)
    messages = [{"role": "user", "content": "Name three colours."}]
    prompt = rt.render_chat(messages, path, chat_template=template)
    reply = rt.chat(messages, path, chat_template=template, max_tokens=16, temperature=0)
    usage = rt.last_usage

    llama_cpp = require("llama_cpp")
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert usage.prompt_tokens == len(tokens)
    assert tokens[0] == llm.token_bos() and tokens[1] != llm.token_bos()  # one BOS, written by the template
    llm.eval(tokens)
    want, tied = [], False
    for _ in range(16):
        row = llm.scores[llm.n_tokens - 1]
        token = int(row.argmax())
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        if np.partition(row, -2)[-2] > row.max() - 0.5:  # a near tie in llama.cpp: the paths may part here
            tied = True
            break
        want.append(token)
        llm.eval([token])
    text = llm.detokenize(want).decode("utf-8", "replace")
    llm.close()
    if tied:
        assert reply.startswith(text.rstrip("\ufffd"))
    else:
        assert reply == text
    assert usage.completion_tokens >= 1


# -- realm chat ------------------------------------------------------------------------------------------

def test_cli_chat_keeps_the_conversation(rt, smollm2_path):
    """Each line is a user message; the replies stream to stdout, one line break after each;
    the conversation carries over; /exit ends it."""
    lines = ["What is the capital of France?", "And of Italy?"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "realm", "chat", "--model", str(smollm2_path), "-t", "0",
                           "-n", "20", "--threads", "2"],
                          input="\n".join(lines) + "\n/exit\nnever read\n", capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    messages, want = [], ""
    for line in lines:
        messages.append({"role": "user", "content": line})
        reply = rt.chat(messages, smollm2_path, max_tokens=20, temperature=0)
        messages.append({"role": "assistant", "content": reply})
        want += reply + "\n"
    assert proc.stdout == want


def test_cli_chat_goes_on_past_a_message_too_long(rt, smollm2_path):
    """A message over the context is one error line, dropped from the conversation; the chat goes
    on (the next reply is the one the conversation without it gets) and exits 1 at its end."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "realm", "chat", "--model", str(smollm2_path), "-t", "0",
                           "-n", "12", "--threads", "2", "--n-ctx", "256"],
                          input="word " * 400 + "\nWhat is the capital of France?\n/exit\n", capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("realm: error:")]
    assert len(errors) == 1 and "do not fit the context" in errors[0], proc.stderr
    want = rt.chat([{"role": "user", "content": "What is the capital of France?"}], smollm2_path, max_tokens=12,
                   temperature=0)
    assert proc.stdout == want + "\n"


def test_cli_chat_refuses_a_model_without_template(gemma3_path, tmp_path):
    from realm.cli import main

    assert main(["chat", "--model", str(gemma3_path)]) == 1
    template = tmp_path / "gemma3.jinja"
    template.write_text(GEMMA3_TEMPLATE)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "realm", "chat", "--model", str(gemma3_path), "--chat-template",
                           str(template), "-n", "4", "--seed", "1", "--stats"],
                          input="Hello\n", capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and "prompt tokens" in proc.stderr
