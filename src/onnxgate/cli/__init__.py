"""The command-line interface: thin commands that parse flags, call the library and render the result."""
