from experiments import switching


def _point(n: int, seed: int, gather_us: float) -> dict:
    ratios = {name: 10.0 + seed for pair in switching.RATIOS.items() for name in pair}
    return {"dnns": n, "seed": seed, "d-gather median us": gather_us, **ratios}


def test_summarise_groups_by_dnn_count_and_spreads_over_seeds():
    summary = switching.summarise([_point(10, 0, 3.0), _point(2, 0, 1.0), _point(2, 1, 3.0)])
    assert list(summary) == [2, 10]
    gather = summary[2]["d-gather median us"]
    assert (gather["mean"], gather["min"], gather["max"], gather["n"]) == (2.0, 1.0, 3.0, 2)
    assert "seed" not in summary[2] and "dnns" not in summary[2]


def test_trend_calls_a_change_only_beyond_the_seeds_range():
    def s(lo, hi):
        return {"min": lo, "max": hi}

    assert switching.trend(s(1, 2), s(3, 4)) == "grows"
    assert switching.trend(s(3, 4), s(1, 2)) == "shrinks"
    assert switching.trend(s(1, 3), s(2, 4)) == "stays within the seeds' range"


def test_answer_is_built_from_the_numbers():
    points = [_point(n, seed, us) for n, us in ((2, 50.0), (100, 70.0)) for seed in (0, 1)]
    text = switching.answer(switching.summarise(points))
    assert "50.0 us with 2 DNNs to 70.0 us with 100: it grows" in text
    assert "torch.load / gather 10.5-10.5x" in text
