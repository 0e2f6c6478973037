"""From a model's completion to the solution source that a benchmark's checker runs.

Two styles, chosen by how the model was prompted:

- ``base``: the model continued the prompt. For function-completion benchmarks (HumanEval,
  MBPP) the solution is ``prompt + sanitize(prompt, completion)``: the completion cut where the
  prompt's function ends (see ``sanitize``), the same cut for every model and temperature. For
  LiveCodeBench it is the completion, stripped (LiveCodeBench's ``GenericBase`` style).
- ``chat``: the model answered a message. The solution is the LAST complete fenced code block
  (```` ```python ... ``` ```` or a bare ```` ``` ````), as apple/ml-ssd's evaluation takes the
  last match of its fence pattern; no complete block means no solution (a sample cut at
  ``max_tokens`` inside its only block has none). For function benchmarks the prompt goes
  before the block: its imports and helper functions stay defined, and the block's definition
  replaces the prompt's stub (a signature with only a docstring, valid Python on its own).

One deliberate difference from ml-ssd's pattern (```` ```[a-zA-Z]*\\n ````): any info string is
accepted on the opening fence (```` ```python3 ````, ```` ```py ````), where ml-ssd's pattern fails to
match there and can pair a closing fence with the next opening one instead.
"""

from __future__ import annotations

import ast
import re

STYLES = ("base", "chat")
_FENCED_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
HELPER_STARTS = ("def ", "async def ", "class ", "@", "import ", "from ")  # top-level code a solution may keep
_DEFINED = re.compile(r"^(?:async\s+def|def|class)\s+(\w+)", re.MULTILINE)


def sanitize(prompt: str, completion: str) -> str:
    """A base model's completion of a function prompt, cut after the function and its helpers.

    The idea of EvalPlus's ``sanitize`` (which keeps the definitions the entry point needs and
    drops the rest) with line scanning and ``ast``: a base model that finished the function body
    often rambles on at the top level (a test call, ``print(...)``, asserts, prose, a second
    attempt), and one line of prose after a correct body is a syntax error for the whole
    program. So the completion is split into top-level blocks (a line at column 0 starts one;
    comments do not), the first block (the body of the prompt's function) is kept, then every
    following block that defines something (``def``, ``class``, a decorator, an import), up to
    the first that does not, or that defines a name again (a second attempt at the function
    would replace the first): the cut. A completion with no body that restates the function from
    column 0 keeps that definition as its answer. If the kept text does not parse with the prompt, trailing
    helpers are dropped (one cut at ``max_tokens`` mid-definition); if even the body alone does
    not parse while the whole completion does (a column-0 line inside a multi-line string), the
    completion is kept whole. A wrong body stays wrong: nothing is added or repaired.
    """
    blocks: list[list[str]] = [[]]
    for i, line in enumerate(completion.splitlines(keepends=True)):
        continues_prompt = i == 0 and not prompt.endswith("\n")
        if line.strip() and not line[0].isspace() and not line.startswith("#") and not continues_prompt:
            blocks.append([])
        blocks[-1].append(line)
    kept = [blocks[0]]
    defined = set(_DEFINED.findall(prompt))
    # No body: the function is restated from column 0 (a whole-function answer, or MBPP's
    # reference code): everything up to its first restatement is the answer, not a second attempt.
    restating = not "".join(blocks[0]).strip()
    for block in blocks[1:]:
        name = _DEFINED.match(block[0])
        if not block[0].startswith(HELPER_STARTS):
            if restating:  # module-level set-up before the restated function (a constant, a table)
                kept.append(block)
                continue
            break
        if name and name.group(1) in defined:
            if not restating:
                break
            restating = False
        defined |= {name.group(1)} if name else set()
        kept.append(block)
    for end in range(len(kept), 0, -1):
        text = "".join(line for block in kept[:end] for line in block)
        if _parses(prompt + text):
            return text
    return completion if _parses(prompt + completion) else "".join(kept[0])


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return False
    return True


def last_code_block(text: str) -> str | None:
    """The body of the last complete fenced code block, or None if there is none."""
    blocks = _FENCED_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def solution(problem: dict, completion: str, style: str) -> str | None:
    """The solution source for one completion; None when a chat answer has no code block."""
    if style not in STYLES:
        raise ValueError(f"unknown completion style {style!r}; known: {', '.join(STYLES)}")
    function_benchmark = problem["kind"] == "function"
    if style == "base":
        return problem["prompt"] + sanitize(problem["prompt"], completion) if function_benchmark else completion.strip()
    block = last_code_block(completion)
    if block is None:
        return None
    return f"{problem['prompt']}\n{block}" if function_benchmark else block
