"""Sub-commands of the ``atmvideo`` command line, one module each."""
