"""Metrics of saved weights on a labelled AFQMC file: python evaluate.py ckpt=DIR file=PATH"""

from afqmc_exp.commands.score import evaluate_main

if __name__ == "__main__":
    evaluate_main()
