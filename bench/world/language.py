"""A small synthetic language with real structure, so that tiny models learn something measurable offline.

    text = split_text("test")                   # the held-out perplexity split, identical bytes everywhere
    s = sample("recall", Rng(7))                 # Sample(prompt, answer, wrong) for multiple-choice tasks

Each line is one statement exercising one ability:
  brackets  `brackets ( [ a ] { b } ) .`                    close the innermost open bracket
  agree     `agree the dog near the cats runs .`           verb number follows the subject, not the distractor
  add       `add 3 plus 4 is 7 .`                           small-number arithmetic
  recall    `recall k3 v7 k1 v2 ... query k1 v2 k3 v7 k0 v5 .`   three key-value lookups over a long context
  copy      `copy b d a | b d a .`                          reproduce a sequence
The generator uses its own PRNG (splitmix64) and no `hash()`, so every machine and Python version writes
the same bytes for the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

MASK64 = (1 << 64) - 1
ABILITIES = ("brackets", "agree", "add", "recall", "copy")
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
SPLIT_LINES = {"train": 80_000, "validation": 2_000, "test": 2_000}
TASK_SEEDS = {"test": 11, "validation": 12}  # multiple-choice items, disjoint seeds from the text splits
CHOICES = {"brackets": 3, "agree": 2, "add": 4, "recall": 4, "copy": 4}  # answer + distractors; chance = 1/n

NOUNS = ("cat", "dog", "bird", "fox", "cow", "owl", "bee", "ant", "elk", "yak", "hen", "pig")
VERBS = (("runs", "run"), ("eats", "eat"), ("sings", "sing"), ("jumps", "jump"), ("sleeps", "sleep"), ("hides", "hide"))
PREPS = ("near", "behind", "with", "under")
LETTERS = tuple("abcdefgh")
OPEN, CLOSE = ("(", "[", "{"), (")", "]", "}")
KEYS = tuple(f"k{i}" for i in range(10))
VALUES = tuple(f"v{i}" for i in range(10))
NUMBERS = tuple(str(i) for i in range(19))


class Rng:
    """splitmix64: tiny, fast and the same everywhere."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def between(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def sample(self, seq, k: int) -> list:
        pool = list(seq)
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


@dataclass(frozen=True)
class Sample:
    ability: str
    prompt: str  # everything before the answer
    answer: str  # the single correct next word
    wrong: tuple[str, ...]  # plausible wrong next words (multiple-choice distractors)
    tail: str = " ."  # what follows the answer in running text

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer}{self.tail}"


def _brackets(rng: Rng) -> Sample:
    words, stack = ["brackets"], []
    length = rng.between(6, 14)
    while len(words) < length or not stack:
        if stack and (len(stack) >= 4 or rng.below(3) == 0):
            words.append(CLOSE[stack.pop()])
        else:
            kind = rng.below(3)
            stack.append(kind)
            words.append(OPEN[kind])
            if rng.below(2):
                words.append(rng.choice(LETTERS))
    answer = CLOSE[stack.pop()]
    rest = " ".join(CLOSE[k] for k in reversed(stack))
    return Sample("brackets", " ".join(words), answer, tuple(c for c in CLOSE if c != answer),
                  tail=(f" {rest}" if rest else "") + " .")


def _agree(rng: Rng) -> Sample:
    noun, other = rng.sample(NOUNS, 2)
    plural, other_plural = rng.below(2) == 1, rng.below(2) == 1
    verb = rng.choice(VERBS)
    subject = noun + ("s" if plural else "")
    distractor = other + ("s" if other_plural else "")
    prompt = f"agree the {subject} {rng.choice(PREPS)} the {distractor}"
    answer, wrong = (verb[1], verb[0]) if plural else (verb[0], verb[1])
    return Sample("agree", prompt, answer, (wrong,))


def _add(rng: Rng) -> Sample:
    a, b = rng.between(0, 9), rng.between(0, 9)
    near = [a + b + d for d in (-1, 1, -2, 2, 3, -3, 4)]
    wrong = tuple(str(x) for x in near if 0 <= x <= 18)[:3]
    return Sample("add", f"add {a} plus {b} is", str(a + b), wrong)


def _recall(rng: Rng) -> Sample:
    n = rng.between(6, 10)
    keys = rng.sample(KEYS, n)
    values = [rng.choice(VALUES) for _ in keys]
    q, *more = rng.sample(range(n), 3)  # three lookups per line; the multiple-choice item asks the first
    pairs = " ".join(f"{k} {v}" for k, v in zip(keys, values))
    # distractors: values seen in this context first (the hard case), then unseen ones
    seen = [v for v in dict.fromkeys(values) if v != values[q]]
    unseen = [v for v in VALUES if v not in values]
    tail = "".join(f" {keys[i]} {values[i]}" for i in more) + " ."
    return Sample("recall", f"recall {pairs} query {keys[q]}", values[q], tuple((seen + unseen)[:3]), tail=tail)


def _copy(rng: Rng) -> Sample:
    seq = [rng.choice(LETTERS) for _ in range(rng.between(3, 7))]
    cut = rng.between(0, len(seq) - 1)
    prompt = "copy " + " ".join(seq) + " |" + "".join(f" {x}" for x in seq[:cut])
    wrong = tuple(sorted(set(LETTERS) - {seq[cut]}))[:3]
    tail = "".join(f" {x}" for x in seq[cut + 1:]) + " ."
    return Sample("copy", prompt, seq[cut], wrong, tail=tail)


GENERATORS = {"brackets": _brackets, "agree": _agree, "add": _add, "recall": _recall, "copy": _copy}


def sample(ability: str, rng: Rng) -> Sample:
    return GENERATORS[ability](rng)


def lines(split: str, count: int | None = None, mix: dict[str, int] | None = None) -> list[str]:
    """The statements of a split, abilities interleaved at random; `mix` weights abilities (default: equal)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split '{split}'; known: {', '.join(SPLIT_SEEDS)}")
    pool = tuple(a for a in ABILITIES for _ in range((mix or {}).get(a, 1)))
    rng = Rng(SPLIT_SEEDS[split])
    return [sample(rng.choice(pool), rng).text for _ in range(count or SPLIT_LINES[split])]


def split_text(split: str, count: int | None = None) -> str:
    return "\n".join(lines(split, count)) + "\n"


def task_docs(ability: str, split: str, count: int) -> list[dict]:
    """Multiple-choice items for one ability: {"prompt", "choices", "label"}, choices in a seeded order."""
    rng = Rng(TASK_SEEDS[split] * 1000 + ABILITIES.index(ability))
    docs = []
    for _ in range(count):
        s = sample(ability, rng)
        choices = [s.answer, *s.wrong]
        assert len(choices) == CHOICES[ability], (ability, choices)
        order = rng.sample(range(len(choices)), len(choices))
        choices = [choices[i] for i in order]
        docs.append({"prompt": s.prompt, "choices": choices, "label": choices.index(s.answer)})
    return docs


def vocabulary() -> list[str]:
    """Every word the language can produce, in a fixed order."""
    words = ["brackets", "agree", "add", "recall", "copy", "the", "plus", "is", "query", "|", "."]
    words += list(OPEN) + list(CLOSE) + list(LETTERS) + list(PREPS) + list(NUMBERS) + list(KEYS) + list(VALUES)
    words += list(NOUNS) + [n + "s" for n in NOUNS] + [v for pair in VERBS for v in pair]
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)
