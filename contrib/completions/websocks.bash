# bash completion for websocks(8)
# Install as /usr/share/bash-completion/completions/websocks, or source it.
# `websocks completions bash` prints this same file.

_websocks()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev="" cmd="" args=0 i
    (( COMP_CWORD > 0 )) && prev=${COMP_WORDS[COMP_CWORD-1]}
    local common="-h --help -V --version"

    # The command is the first word that is neither an option nor the
    # value of -c; count the words after it that are not options.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case ${COMP_WORDS[i]} in
            -c|--config) (( i++ )) ;;
            -*) ;;
            *) if [[ -z $cmd ]]; then cmd=${COMP_WORDS[i]}; else (( args++ )); fi ;;
        esac
    done

    case $prev in
        -c|--config)
            compopt -o filenames 2>/dev/null
            local IFS=$'\n'
            COMPREPLY=( $(compgen -f -- "$cur") )
            return 0
            ;;
    esac

    local words
    case $cmd in
        "") words="server agent run check hash-password completions $common" ;;
        server|agent|run|check) words="-c --config $common" ;;
        hash-password) words=$common ;;
        completions)
            words=$common
            (( args == 0 )) && words="bash zsh fish $common"
            ;;
        *) return 0 ;;
    esac
    COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    return 0
}
complete -F _websocks websocks
