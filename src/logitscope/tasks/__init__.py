"""Prompt sets: built-in, from a JSONL file, or generated (IOI)."""

from logitscope.tasks.prompts import Prompt, builtin_prompts, load_jsonl, load_prompts

__all__ = ["Prompt", "builtin_prompts", "load_jsonl", "load_prompts"]
