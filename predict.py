"""CLUE-format predictions for an AFQMC file: python predict.py ckpt=DIR file=PATH out=PATH"""

from afqmc_exp.commands.score import predict_main

if __name__ == "__main__":
    predict_main()
