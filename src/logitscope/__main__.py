from logitscope.cli import entry

entry()
