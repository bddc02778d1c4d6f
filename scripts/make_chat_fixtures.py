#!/usr/bin/env python3
"""Writes the chat-template fixtures, with transformers' own rendering as the
reference (pinned: transformers==5.24.0, tokenizers==0.23.3, jinja2==3.1.6).

tests/fixtures/chat/conversations.json
    The conversations (OpenAI-style messages, optional tools) and the
    template options the renders use. Written here, read by the specs too.

tests/fixtures/chat/expected.json
    For each template x conversation x option set: the text of
    tokenizer.apply_chat_template(messages, tools=..., tokenize=False, ...)
    or the error it raised, and for add_generation_prompt=True the ids of
    that text as transformers tokenizes it (Qwen3's tokenizer, or the
    GLM-like one for GLM-4.7-Flash).

tests/fixtures/chat/jinja_cases.json
    Small templates exercising one Jinja feature each, with variables and
    what jinja2 renders in transformers' chat-template environment.

Templates: the real Qwen3 one is read from ../shared/data/qwen3-tokenizer
(tokenizer_config.json; never copied here), "qwen3-hybrid" is derived from
it by giving it the enable_thinking switch of Qwen3's hybrid-thinking
models, and the others are the .jinja files in tests/fixtures/chat (see
SOURCES.md there). GLM-4.7-Flash renders through the GLM-like tokenizer in
tests/fixtures/tokenizer/glm4 (scripts/make_tokenizer_fixtures.py).

Usage: /root/.venvs/fix/bin/python scripts/make_chat_fixtures.py
"""
import json
import os
import sys

REQUIRED = {"transformers": "5.24.0", "tokenizers": "0.23.3", "jinja2": "3.1.6"}

import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402

for mod in (jinja2, tokenizers, transformers):
    want = REQUIRED[mod.__name__]
    if mod.__version__ != want:
        sys.exit(f"need {mod.__name__}=={want}, found {mod.__version__}")

from transformers import AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PIO_QWEN3_TOKENIZER_DIR",
                        os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer"))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat")
GLM_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "glm4")

# The generation prompt of the shared (thinking) Qwen3 template, and the one of
# Qwen3's hybrid-thinking models, which honours enable_thinking.
QWEN3_GEN = "    {{- '<|im_start|>assistant\\n<think>\\n' }}\n"
QWEN3_HYBRID_GEN = ("    {{- '<|im_start|>assistant\\n' }}\n"
                    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
                    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
                    "    {%- endif %}\n")


def qwen3_hybrid(template):
    assert template.count(QWEN3_GEN) == 1, "the shared Qwen3 template changed"
    return template.replace(QWEN3_GEN, QWEN3_HYBRID_GEN)


# ---- conversations ------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.\n  Uses the \"metric\" system. ",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Z\u00fcrich or \u6771\u4eac"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 16.0, "description": "Forecast days"},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web \u2014 returns snippets",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": ["string", "null"], "description": "What to look for"},
                "filters": {
                    "type": "object",
                    "properties": {"site": {"type": "string"}, "after": {"type": "string", "format": "date"}},
                    "additionalProperties": False,
                },
                "top_k": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 1e-06},
                "$weird-key name": {"type": "boolean", "const": True, "examples": [True, None, 1.5]},
            },
            "required": ["query", "top_k"],
        },
        "strict": True,
    },
}
BARE_TOOL = {"name": "now", "description": "Current time", "parameters": {"type": "object", "properties": {}}}

CONVERSATIONS = [
    {"name": "single_user", "messages": [{"role": "user", "content": "Hello!"}]},
    {"name": "system_user", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"}]},
    {"name": "multi_turn", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green.\n"},
        {"role": "user", "content": "  Thanks  \n"}]},
    {"name": "think_history", "messages": [
        {"role": "user", "content": "Is 17 prime?"},
        {"role": "assistant", "content": "<think>\nCheck divisors up to 4.\n</think>\n\nYes, 17 is prime."},
        {"role": "user", "content": "And 21?"},
        {"role": "assistant", "content": "<think>21 = 3 * 7</think>No: 21 = 3 \u00d7 7."}]},
    {"name": "reasoning_fields", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "The user greets me."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye.", "reasoning": "Closing."}]},
    {"name": "tools_only", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"}]},
    {"name": "tools_system", "tools": [WEATHER, SEARCH, BARE_TOOL], "messages": [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Find news about \"Lua\" and the weather in \u6771\u4eac."}]},
    {"name": "tool_roundtrip", "tools": [WEATHER, SEARCH], "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris and Rome for 3 days?"},
        {"role": "assistant", "content": "<think>\nTwo cities, two calls.\n</think>\n\nLet me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "unit": "celsius"}}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Rome", "days": 3, "extra": {"a": [1, 2.5, None, True]}}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 18, \"sky\": \"cloudy\"}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Sunny, 24\u00b0C"},
        {"role": "assistant", "content": "Paris: 18\u00b0C, cloudy. Rome: 24\u00b0C, sunny."},
        {"role": "user", "content": "Search for \"umbrella\" deals."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"query": "umbrella deals", "top_k": 5}}}]},
        {"role": "tool", "content": "<tool_response>no results</tool_response>"}]},
    {"name": "tool_string_args", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "content": "Snow"},
        {"role": "assistant", "content": "It snows in Oslo."}]},
    {"name": "tool_first", "messages": [
        {"role": "tool", "content": "orphan result"},
        {"role": "user", "content": "What was that?"}]},
    {"name": "unicode", "messages": [
        {"role": "system", "content": "Antworte auf Deutsch. \u2014 \u00abGuillemets\u00bb"},
        {"role": "user", "content": "\u4f60\u597d\uff01\U0001F44B\U0001F3FD caf\u00e9 \"quoted\" back\\slash\ttab\r\nCRLF <|im_end|> {{ not jinja }}"}]},
    {"name": "multimodal", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Describe images."}]},
        {"role": "user", "content": [
            {"type": "image", "image": "file://cat.png"},
            {"type": "text", "text": "What is this?"},
            {"type": "video", "video": "file://clip.mp4"},
            {"type": "text", "text": " And this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat, then a clip."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}, {"type": "text", "text": "More?"}]}]},
    {"name": "assistant_last", "messages": [
        {"role": "user", "content": "Complete: The sky is"},
        {"role": "assistant", "content": " blue"}]},
    {"name": "system_only", "messages": [{"role": "system", "content": "Just a system prompt."}]},
]

# Option sets applied to every conversation.
OPTION_SETS = [
    {"add_generation_prompt": False},
    {"add_generation_prompt": True},
    {"add_generation_prompt": True, "enable_thinking": False},
    {"add_generation_prompt": True, "enable_thinking": True},
]
EXTRA_OPTIONS = {
    "glm-4.7-flash": [{"add_generation_prompt": False, "clear_thinking": False}],
    "qwen3-vl": [{"add_generation_prompt": True, "add_vision_id": True}],
}

# ---- Jinja micro-cases ---------------------------------------------------------------

JINJA_CASES = [
    # whitespace control, trim_blocks and lstrip_blocks
    ("  {% if true %}\n  yes\n  {% endif %}\n  end", {}),
    ("a  {%+ if true %}x{% endif +%}\nb", {}),
    ("{%- for x in [1, 2] -%}\n  {{ x }}\n{%- endfor %}\n", {}),
    ("x   {%- if true %} y {% endif -%}   \n\n z", {}),
    ("line1\n    {# comment #}\n    text\n{# c2 -#}   after", {}),
    ("{{ 'a' -}}   \n  {{- 'b' }}  {{ 'c' }}", {}),
    ("a\n\t {% set x = 1 %}\n\tb{{ x }}\r\nc\rd\n", {}),
    ("{% raw %}{{ x }}{% endraw %}|{%- raw -%}  {{ y }}  {%- endraw -%}|", {}),
    ("  {#- c #}  x\n  {%- if true -%}  y  {%- endif -%}\n", {}),
    ("keep trailing\n\n", {}),
    ("\u3000 {%- if true %}u{% endif %}", {}),
    # literals and printing
    ("{{ 1 }} {{ 1.0 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1/3 }} {{ -0.0 }} {{ 1_000 }} {{ 0x1F }}", {}),
    ("{{ none }} {{ true }} {{ false }} {{ None }} {{ True }} {{ [] }} {{ {} }} {{ () }} {{ (1,) }} {{ (1, 'a') }}", {}),
    ("{{ 'a\\u00e9\\x41\\n\\t\\\\' }}|{{ \"it's\" }}|{{ 'say \"hi\"' }}|{{ '\\d' }}|{{ 'x' 'y' }}", {}),
    ("{{ ['it\\'s', \"a\\\"b\", 'x\\ny', '\\xa0', '\\u200b', '\\x7f', '\u00e9', '\\x01', 'both \\' and \"'] }}", {}),
    ("{{ {'k': [1, 2.5, none, true], 'n': {'a': 'b'}} }} {{ [1, 'a', none, true, 1.5, (1,), (1, 2)] }}", {}),
    ("{{ x }}|{{ d }}|{{ l }}|{{ n }}|{{ b }}|{{ f }}|{{ s }}", {"x": None, "d": {"b": 1, "a": [1, {"z": None}]}, "l": ["q", 1.5, 2], "n": 7, "b": False, "f": 2.0, "s": "str"}),
    ("{{ undefined_var }}|{{ undefined_var is defined }}|{{ d.missing }}|{{ d.missing is defined }}|{{ l[9] is defined }}", {"d": {}, "l": []}),
    # arithmetic and comparison
    ("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }}", {}),
    ("{{ 1 + 1.5 }} {{ true + 1 }} {{ 10 / 4 }} {{ 10.0 // 4 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1, 2] + [3] }} {{ 'a' ~ 1 ~ none ~ [2] }}", {}),
    ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'abc' }} {{ 2 not in [1] }} {{ none == none }} {{ 1 == 1.0 }} {{ 1 == true }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 'a' != 'a' }}", {}),
    ("{{ 'k' in d }} {{ 'z' in d }} {{ 1 in l }} {{ 'x' in l }} {{ d == e }} {{ l == [1, 'x'] }}", {"d": {"k": 1}, "e": {"k": 1}, "l": [1, "x"]}),
    ("{{ not true }} {{ not '' }} {{ true and 'x' }} {{ '' or 'y' }} {{ 0 or none }} {{ [] and 1 }} {{ 1 if true else 2 }} {{ 1 if false else 2 }} [{{ 'x' if false }}]", {}),
    ("{{ - 1 + 2 }} {{ -x }} {{ +x }} {{ (1, 2)[0] }} {{ 'abc'[-1] }} [{{ 'abc'[5] }}] {{ [1, 2, 3][::-1] }} {{ 'h\u00e9llo'[1:3] }} {{ [1, 2, 3, 4][1::2] }} {{ 'abcdef'[-2:] }} {{ 'abc'[:-1] }}", {"x": 3}),
    ("{{ l[0] }} {{ l[-1] }} {{ l.0 }} {{ d['k'] }} {{ d.k }} {{ d['items'] is defined }} {{ d.items is defined }}", {"l": ["a", "b"], "d": {"k": "v"}}),
    # strings
    ("{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} {{ 'a-b-c'.rsplit('-', 1) }} {{ ''.split() }} {{ ''.split(',') }} {{ '  x  y '.split(None, 1) }}", {}),
    ("[{{ '  x  '.strip() }}] [{{ 'xxaxx'.strip('x') }}] [{{ '  a  '.lstrip() }}] [{{ '  a  '.rstrip() }}] [{{ 'a\\n\\n'.rstrip('\\n') }}] [{{ '\\n\\na'.lstrip('\\n') }}] [{{ '\u3000a\\xa0'.strip() }}]", {}),
    ("{{ 'abc'.title() }} {{ 'hello world\\'s 1st'.title() }} {{ 'aBC'.capitalize() }} {{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ '\u00e9t\u00e9 \u0434\u043e\u043c \u03b1\u03b2'.upper() }} {{ 'STRASSE \u00c9T\u00c9'.lower() }} {{ 'stra\u00dfe'.upper() }}", {}),
    ("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'abc'.find('c') }} {{ 'abc'.find('z') }} {{ 'a-b-a'.rfind('a') }} {{ 'a-b-a'.count('a') }} {{ 'abc'.replace('b', 'B') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ ','.join(['a', 'b']) }}", {}),
    ("{{ 'x'.startswith('x', 1) }} {{ 'abc'.index('b') }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }} {{ 'a\\nb'.splitlines() }} {{ 'ab'.zfill(4) }} {{ 'ab'.center(6, '*') }} {{ 'pre_x'.removeprefix('pre_') }}", {}),
    ("{{ s.startswith('<tool_response>') and s.endswith('</tool_response>') }} {{ s.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}", {"s": "<think>\nr\n</think>\n\nans"}),
    # filters
    ("{{ 'hello'|replace('l', 'L') }} {{ 'hello'|replace('l', 'L', 1) }} {{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(width='> ', blank=true) }}", {}),
    ("{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A']|sort(case_sensitive=true) }} {{ [3, 1]|sort(reverse=true) }} {{ l|sort(attribute='n')|map(attribute='n')|list }}", {"l": [{"n": 2}, {"n": 1}]}),
    ("{{ [3, 1]|max }} {{ [3, 1]|min }} {{ [1, 2, 3]|sum }} {{ 'abc'|reverse }} {{ [1, 2]|reverse|list }} {{ [1, 2, 2, 1]|unique|list }} {{ ' a b c '|wordcount }} {{ [1, 2]|first }} {{ [1, 2]|last }} {{ 'ab'|list }}", {}),
    ("{{ l|map(attribute='a')|list }} {{ l|selectattr('a')|list }} {{ l|rejectattr('a')|list }} {{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3]|reject('even')|list }} {{ ['a', 'b']|map('upper')|join(',') }} {{ l|selectattr('a', 'equalto', 2)|list }}", {"l": [{"a": 1}, {"b": 2}, {"a": 2}]}),
    ("{{ x|default('d') }} {{ x|d('d', true) }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }} {{ 0|default(5, boolean=true) }}", {}),
    ("{{ 'abc'|length }} {{ [1, 2]|count }} {{ {'a': 1}|length }} {{ ''|length }} {{ 3.7|int }} {{ '42'|int }} {{ 'x'|int(7) }} {{ '3.5'|float }} {{ 3|float }} {{ -3|abs }} {{ '  t  '|trim }} {{ 'xxtxx'|trim('x') }}", {}),
    ("{{ 3.14159|round(2) }} {{ 2.5|round }} {{ 3.5|round }} {{ 3.2|round(method='ceil') }} {{ 3.8|round(0, 'floor') }} {{ 42|string }} {{ [1]|string }} {{ 'AbC'|lower }} {{ 'abc'|upper }} {{ 'hello world'|title }} {{ 'aBC'|capitalize }}", {}),
    ("{{ d|items|list }} {% for k, v in d|items %}{{ k }}={{ v }};{% endfor %} {{ d|dictsort }} {{ d|dictsort(by='value', reverse=true) }}", {"d": {"b": 1, "a": 2, "c": 0}}),
    ("{{ [1, 2]|join }} {{ [1, 2]|join('-') }} {{ l|join(', ', attribute='n') }} {{ 'abc'|join('.') }}", {"l": [{"n": "x"}, {"n": 3}]}),
    ("{{ '%s is %d'|format('a', 3) }} {{ '%s-%s' % ('a', 'b') }} {{ 'v=%r' % 'q' }} {{ 'abcdef'|truncate(5, leeway=0) }} {{ 'a <b> & c'|e }} {{ ('<x>'|safe) + '<y>' }} {{ '<a>' ~ ('<x>'|safe) }}", {}),
    # tojson as transformers defines it
    ("{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ [] |tojson(indent=2) }}|{{ {} |tojson(indent=4) }}|{{ d|tojson(separators=(',', ':')) }}|{{ d|tojson(sort_keys=true) }}", {"d": {"b": 1, "a": [1, 2.0, None, True, "\u00e9\n\"\\", {"z": {}}]}}),
    ("{{ 'x'|tojson }} {{ 1.0|tojson }} {{ 1e-06|tojson }} {{ 1e16|tojson }} {{ (1, 2)|tojson }} {{ '\u00e9\U0001F600\\u2028\\x7f\\x1f'|tojson }} {{ '\u00e9\U0001F600\\x7f'|tojson(ensure_ascii=True) }} {{ none|tojson }} {{ d|tojson(indent='\\t') }}", {"d": {"k": [1]}}),
    ("{{ tools|tojson }}", {"tools": [WEATHER, SEARCH]}),
    ("{% for t in tools %}{{ t|tojson(ensure_ascii=False, indent=4) }}\n{% endfor %}", {"tools": [WEATHER, BARE_TOOL]}),
    # tests
    ("{{ x is defined }} {{ y is undefined }} {{ none is none }} {{ 'a' is string }} {{ 1 is number }} {{ true is number }} {{ true is integer }} {{ 1.0 is float }} {{ 1 is integer }} {{ true is boolean }} {{ d is mapping }} {{ d is iterable }} {{ d is sequence }} {{ 'a' is sequence }} {{ y is sequence }} {{ y is iterable }} {{ none is iterable }}", {"x": 1, "d": {}}),
    ("{{ 3 is divisibleby 3 }} {{ 'A' is upper }} {{ 'a' is lower }} {{ 1 is odd }} {{ 2 is even }} {{ 1 is eq 1 }} {{ 2 is gt 1 }} {{ 1 is in [1] }} {{ none is sameas none }} {{ true is true }} {{ 0 is false }} {{ f is callable }} {{ d.get is callable }}", {"d": {}}),
    ("{{ x is not none }} {{ x is not defined }} {{ not x is defined }} {{ (x is string) and x|length > 1 }}", {"x": "ab"}),
    # statements
    ("{% set y = 'o' %}{% for a in [1, 2] %}{{ y }}{% set y = a %}{{ y }}{% endfor %}{{ y }}", {}),
    ("{% set count = 0 %}{% for i in range(3) %}{% set count = count + 1 %}{{ count }}{% endfor %}{{ count }}", {}),
    ("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}", {}),
    ("{% set ns = namespace(x=1, items=[]) %}{% for a in [1, 2] %}{% set ns.x = ns.x + a %}{% endfor %}{{ ns.x }} {{ ns }}", {}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a }}{{ b }}{% endfor %} {% for a in [] %}x{% else %}empty{% endfor %} {% for a in [1, 2, 3] %}{% if a == 2 %}{% continue %}{% endif %}{{ a }}{% endfor %} {% for a in [1, 2, 3] %}{% if a == 2 %}{% break %}{% endif %}{{ a }}{% endfor %}", {}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {% for k in d %}{{ k }};{% endfor %} {% for c in 'h\u00e9' %}[{{ c }}]{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{% for x in [1, 2, 3] if x > 1 %}{{ loop.index }}{{ loop.index0 }}{{ loop.length }}{{ loop.first }}{{ loop.last }}{{ loop.revindex }}{{ loop.revindex0 }}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", {}),
    ("{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %} {% for i in [1, 1, 2] %}{{ loop.changed(i) }}{% endfor %} {% for a in [1] %}{% for b in [2] %}{{ loop.depth }}{% endfor %}{% endfor %}", {}),
    ("{% for a in [1, 2] %}{% for b in [3] %}{% set a = b %}{% endfor %}{{ a }}{% endfor %} {{ range(3) }} {{ range(1, 7, 2)|list }} {{ range(5, 0, -2)|list }}", {}),
    ("{% macro f(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ f(1) }}{{ f(1, 2) }}{{ f(b=3, a=4) }}[{{ f() }}]", {}),
    ("{% macro m() %}{{ x }}{% endmacro %}{% set x = 5 %}{{ m() }}{% set x = 6 %}{{ m() }} {% macro t(v) -%}\n  <{{ v }}>\n{%- endmacro %}{{ t('q') }}", {}),
    ("{% set x %}abc{{ 1 }}{% endset %}{{ x }} {{ x is string }} {% set y | upper %}up{% endset %}{{ y }}", {}),
    ("{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", {}),
    ("{% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}{% if not a and not b %}!{% endif %}", {"b": 0, "c": [1]}),
    ("{{ dict(a=1, b=2) }} {{ dict(d, c=3) }} {{ namespace(a=1).a }} {{ d.get('k') }} {{ d.get('z') }} {{ d.get('z', 2) }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }}", {"d": {"k": "v"}}),
    ("{% generation %}gen {{ 1 }}{% endgeneration %}|{{ messages[0]['content'] }}|{{ messages[0].content }}", {"messages": [{"role": "user", "content": "hi"}]}),
    ("{% if tools is not none and tools|length > 0 %}T{% else %}none{% endif %} {{ tools is defined }} {{ tools is iterable }}", {"tools": None}),
    # errors: jinja2 raises, so must pio (messages differ; both must fail)
    ("{{ x.y }}", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ 1 + 'a' }}", {}),
    ("{{ raise_exception('boom') }}", {}),
    ("{{ x|tojson }}", {}),
    ("{{ [].append(1) }}", {}),
    ("{% for a in 5 %}{% endfor %}", {}),
]


# ---- rendering -----------------------------------------------------------------------------

def render_case(template, variables):
    try:
        return {"output": _compile_jinja_template(template).render(**variables)}
    except Exception as e:  # noqa: BLE001 - the failure is the expected result
        return {"error": f"{type(e).__name__}: {e}"}


def render_chat(tok, template, conv, opts, with_ids):
    kwargs = dict(opts)
    if "tools" in conv:
        kwargs["tools"] = conv["tools"]
    try:
        text = tok.apply_chat_template(conv["messages"], chat_template=template, tokenize=False, **kwargs)
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}
    out = {"text": text}
    if not with_ids:
        return out
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the same ids from tokenizers directly (transformers must agree)
    assert ids == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    out["ids"] = ids
    return out


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(obj)
        for i, k in enumerate(keys):
            v = obj[k]
            f.write(json.dumps(k) + ": ")
            if isinstance(v, list):
                f.write("[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in v) + "\n]")
            else:
                f.write(json.dumps(v, ensure_ascii=False))
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    os.makedirs(OUT, exist_ok=True)
    versions = {m.__name__: m.__version__ for m in (transformers, tokenizers, jinja2)}

    cases = []
    for template, variables in JINJA_CASES:
        cases.append({"template": template, "vars": variables, **render_case(template, variables)})
    dump(os.path.join(OUT, "jinja_cases.json"), {"versions": versions, "cases": cases})

    if not os.path.isdir(SHARED):
        sys.exit(f"Qwen3 tokenizer not found at {SHARED}")
    qwen = AutoTokenizer.from_pretrained(SHARED)
    with open(os.path.join(SHARED, "tokenizer_config.json"), encoding="utf-8") as f:
        qwen3_template = json.load(f)["chat_template"]
    glm = AutoTokenizer.from_pretrained(GLM_DIR)

    def fixture(name):
        with open(os.path.join(OUT, name), encoding="utf-8") as f:
            return f.read()

    templates = {
        "qwen3": (qwen, qwen3_template),
        "qwen3-hybrid": (qwen, qwen3_hybrid(qwen3_template)),
        "qwen3-coder": (qwen, fixture("qwen3-coder.jinja")),
        "qwen3-vl": (qwen, fixture("qwen3-vl.jinja")),
        # the GLM directory's own template (chat_template.jinja) must be this file
        "glm-4.7-flash": (glm, fixture("glm-4.7-flash.jinja")),
    }
    assert glm.chat_template == templates["glm-4.7-flash"][1]

    with open(os.path.join(OUT, "conversations.json"), "w", encoding="utf-8") as f:
        json.dump({"conversations": CONVERSATIONS, "option_sets": OPTION_SETS,
                   "extra_options": EXTRA_OPTIONS}, f, ensure_ascii=False, indent=1)
        f.write("\n")

    renders = []
    for tname, (tok, template) in templates.items():
        for conv in CONVERSATIONS:
            for opts in OPTION_SETS + EXTRA_OPTIONS.get(tname, []):
                # ids for one option set keep the file small; the text is what differs
                r = render_chat(tok, template, conv, opts, opts == {"add_generation_prompt": True})
                renders.append({"template": tname, "conversation": conv["name"], "options": opts, **r})
    n_err = sum(1 for r in renders if "error" in r)
    print(f"{len(renders)} renders, {n_err} raise")
    dump(os.path.join(OUT, "expected.json"), {"versions": versions, "renders": renders})


if __name__ == "__main__":
    main()
