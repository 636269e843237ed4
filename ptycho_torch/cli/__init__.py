"""`ptycho-torch`: argparse and printing only; every command is one call of ptycho_torch.api.

    main.py   the commands (simulate, train, reconstruct, solve, evaluate, demo), run_cli (one-line errors,
              exit codes), main (the console script)
    flags.py  the run flags: --config, the common spellings (--epochs, --batch-size, ...), one
              --section.field flag per config field, parsed to dotted overrides
"""
