"""Table 2's figures keep their precision from the tiny presets to the paper's."""
from dice_core.reporting.collect import ModelResults
from dice_core.reporting.tables import table2


def test_table2_prints_multiply_adds_in_m_or_g_with_two_decimals():
    tiny = ModelResults("dice-t", static={"trainable_params": 1_234_567,
                                          "macs_without_attention": 12_104_000,
                                          "flops": 24_208_000, "throughput": None})
    paper = ModelResults("dice-xl", static={"trainable_params": 700_000_000,
                                            "macs_without_attention": 118_604_000_000,
                                            "flops": 237_208_000_000,
                                            "throughput": {"samples_per_s": 0.48781}})
    rows = table2([tiny, paper]).splitlines()[2:]
    assert rows[0] == "| dice-t | 1,234,567 | 12.10 M | 24.21 M | - |"
    assert rows[1] == "| dice-xl | 700,000,000 | 118.60 G | 237.21 G | 0.4878 |"
