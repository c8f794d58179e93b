from . import exit_with, interruptible

with interruptible():  # Ctrl-C during the CLI's imports: `interrupted`, exit 130; main handles it after
    from .cli import main

exit_with(main())
