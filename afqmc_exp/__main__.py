"""``python -m afqmc_exp COMMAND [key=value ...]``: train, evaluate, predict, report or disk (the same
commands as ``afqmc-train``, ``afqmc-evaluate``, ``afqmc-predict``, ``afqmc-report`` and ``afqmc-disk``)."""

import sys

COMMANDS = {
    "train": ("afqmc_exp.commands.train", "train_main"),
    "evaluate": ("afqmc_exp.commands.score", "evaluate_main"),
    "predict": ("afqmc_exp.commands.score", "predict_main"),
    "report": ("afqmc_exp.commands.report", "main"),
    "disk": ("afqmc_exp.commands.disk", "main"),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(f"usage: python -m afqmc_exp {{{','.join(COMMANDS)}}} [key=value ...]  (COMMAND --help)")
    command = sys.argv.pop(1)
    sys.argv[0] = f"afqmc-{command}"
    module, function = COMMANDS[command]
    getattr(__import__(module, fromlist=[function]), function)()


if __name__ == "__main__":
    main()
