"""The quickstart sample: small AFQMC-format files this project writes itself and ships in the package.

Real AFQMC is Chinese, and the offline model (English all-MiniLM-L6-v2) turns ~41% of its characters
into [UNK]; it cannot show learning there. The sample is therefore English questions about a payments
app in AFQMC's exact format: a pair is labelled "1" when both questions ask the same thing (two
phrasings of one intent about one product) and "0" otherwise (a different intent about the *same*
product, so word overlap alone does not give the answer). About 31% of the pairs are positive, as in
AFQMC. The files are deterministic; ``python -m afqmc_exp.data.quickstart_sample DIR`` rewrites them, and a test checks
that the shipped files equal the generator's output.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "quickstart"  # shipped in the package: ${afqmc.sample:}
PRODUCTS = [
    "credit line",
    "pay later plan",
    "cash loan",
    "wallet",
    "savings account",
    "debit card",
    "membership",
    "installment plan",
]

# intent -> phrasings; {p} is the product. Phrasings of one intent mean the same thing.
INTENTS = {
    "raise_limit": [
        "how do i increase the limit of my {p}",
        "can i get a higher limit on my {p}",
        "what should i do to raise my {p} limit",
        "is there a way to make my {p} limit bigger",
    ],
    "close": [
        "how can i close my {p}",
        "i want to cancel my {p}",
        "where do i shut down my {p}",
        "steps to terminate my {p}",
    ],
    "repay_early": [
        "can i pay back my {p} early",
        "is early repayment of the {p} allowed",
        "how do i repay my {p} before the due date",
        "may i settle my {p} ahead of time",
    ],
    "fee": [
        "how much does the {p} cost",
        "what fees come with the {p}",
        "is the {p} free to use",
        "what is the charge for using the {p}",
    ],
    "unavailable": [
        "why can't i use my {p}",
        "my {p} is not working",
        "why is my {p} unavailable",
        "the {p} stopped working for me",
    ],
    "open": [
        "how do i open a {p}",
        "where can i apply for a {p}",
        "i would like to sign up for a {p}",
        "what do i need to get a {p}",
    ],
    "due_date": [
        "when is my {p} payment due",
        "what is the due date of my {p}",
        "on which day must i pay my {p}",
        "when do i have to repay the {p}",
    ],
    "overdue": [
        "what happens if my {p} payment is late",
        "is there a penalty for paying the {p} late",
        "i missed my {p} payment what now",
        "consequences of an overdue {p}",
    ],
    "refund": [
        "how do i get a refund to my {p}",
        "when will the refund reach my {p}",
        "my refund has not arrived in my {p}",
        "where is the money refunded to my {p}",
    ],
    "change_phone": [
        "how do i change the phone number on my {p}",
        "update the mobile number linked to my {p}",
        "my {p} still has my old phone number",
        "switch the phone number of my {p}",
    ],
}


def _pairs(rng: random.Random, n: int, positive_share: float = 0.31) -> list[dict]:
    pairs, intents = [], list(INTENTS)
    for _ in range(n):
        product = rng.choice(PRODUCTS)
        first = rng.choice(intents)
        if rng.random() < positive_share:
            a, b = rng.sample(INTENTS[first], 2)
            label = "1"
        else:
            second = rng.choice([i for i in intents if i != first])
            a, b = rng.choice(INTENTS[first]), rng.choice(INTENTS[second])
            label = "0"
        pairs.append({"sentence1": a.format(p=product), "sentence2": b.format(p=product), "label": label})
    return pairs


def write_sample(
    target: str | Path, n_train: int = 480, n_dev: int = 160, n_test: int = 160, seed: int = 20240601
) -> Path:
    """Write train/dev (labelled) and test (``id``, no label, like the official test set) into ``target``."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    test = [
        {"id": i, "sentence1": p["sentence1"], "sentence2": p["sentence2"]} for i, p in enumerate(_pairs(rng, n_test))
    ]
    for name, rows in (("train.json", _pairs(rng, n_train)), ("dev.json", _pairs(rng, n_dev)), ("test.json", test)):
        (target / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return target


if __name__ == "__main__":
    print(write_sample(sys.argv[1] if len(sys.argv) > 1 else SAMPLE_DIR))
