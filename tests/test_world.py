import hashlib

from bench.world import language as world


def test_splits_are_byte_identical_everywhere():
    # Golden hashes: the generator must write the same bytes on every machine and Python version.
    digest = hashlib.sha256(world.split_text("test").encode()).hexdigest()
    assert digest == GOLDEN_TEST_SHA256
    assert world.split_text("test") == world.split_text("test")


def test_splits_differ_and_cover_every_ability():
    train, test = world.lines("train", 500), world.lines("test", 500)
    assert train != test
    for ability in world.ABILITIES:
        assert any(line.startswith(ability + " ") for line in test)


def test_samples_are_consistent():
    rng = world.Rng(5)
    for _ in range(200):
        for ability in world.ABILITIES:
            s = world.sample(ability, rng)
            assert s.answer not in s.wrong
            assert s.text.startswith(s.prompt + " " + s.answer)
            assert set(s.text.split()) <= set(world.vocabulary())


def test_brackets_close_correctly():
    pairs = dict(zip(world.OPEN, world.CLOSE))
    rng = world.Rng(9)
    for _ in range(300):
        stack = []
        for w in world.sample("brackets", rng).text.split()[1:-1]:
            if w in pairs:
                stack.append(pairs[w])
            elif w in world.CLOSE:
                assert stack.pop() == w
        assert stack == []


def test_add_and_agree_are_right():
    rng = world.Rng(3)
    for _ in range(100):
        s = world.sample("add", rng)
        a, b = int(s.prompt.split()[1]), int(s.prompt.split()[3])
        assert int(s.answer) == a + b
        s = world.sample("agree", rng)
        subject = s.prompt.split()[2]
        assert s.answer.endswith("s") != subject.endswith("s")


GOLDEN_TEST_SHA256 = "9d86a94cf6900fca832c5f1c9d695da11a96d451a97a97083f2d267526f7d026"
