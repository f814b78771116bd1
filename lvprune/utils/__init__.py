"""Helpers with no pruning in them: atomic file writes (`atomic_files`), typed command lines and YAML configs on
`HfArgumentParser` (`command_line`)."""
