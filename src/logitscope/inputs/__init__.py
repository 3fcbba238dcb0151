"""Prompt sets: built-in, from a JSONL file, generated (IOI), or passed as a list."""

from logitscope.inputs.prompt import Prompt
from logitscope.inputs.prompts import builtin_prompts, load_jsonl, load_prompts, parse_prompts

__all__ = ["Prompt", "builtin_prompts", "load_jsonl", "load_prompts", "parse_prompts"]
