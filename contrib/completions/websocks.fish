# fish completion for websocks(8)
# Install as /usr/share/fish/vendor_completions.d/websocks.fish, or in
# ~/.config/fish/completions/. `websocks completions fish` prints this
# same file.

set -l cmds server agent run check hash-password completions

complete -c websocks -f
complete -c websocks -s h -l help -d 'Print usage and exit'
complete -c websocks -s V -l version -d 'Print the version and exit'

complete -c websocks -n "not __fish_seen_subcommand_from $cmds" -a server -d 'Run the WebSocks server'
complete -c websocks -n "not __fish_seen_subcommand_from $cmds" -a agent -d 'Run the WebSocks agent (local SOCKS5/HTTP proxy)'
complete -c websocks -n "not __fish_seen_subcommand_from $cmds" -a run -d 'Run every section of the file in one process'
complete -c websocks -n "not __fish_seen_subcommand_from $cmds" -a check -d 'Validate a configuration file'
complete -c websocks -n "not __fish_seen_subcommand_from $cmds" -a hash-password -d 'Print the stored digest of a password'
complete -c websocks -n "not __fish_seen_subcommand_from $cmds" -a completions -d 'Print a completion script for a shell'

complete -c websocks -n "__fish_seen_subcommand_from server agent run check" -s c -l config -r -F -d 'Configuration file (YAML)'
complete -c websocks -n "__fish_seen_subcommand_from completions; and not __fish_seen_subcommand_from bash zsh fish" -a 'bash zsh fish' -d Shell
