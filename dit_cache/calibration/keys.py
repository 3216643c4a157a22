"""The names inside a profile, in one place: per-step list keys, policy section names and the keys of the large
arrays (the .safetensors beside the JSON). Every writer (recorder, fit, runner, built-in profiles) and every reader
(policies, auto, eval) builds them here, so a name cannot drift between the two sides.

Array keys:
    records/<index>/<branch>/<kind>   one calibration job's table (`kind`: fb_pairs, res_pairs, input_pairs,
                                      output_pairs, output_gram, block_input_change, block_residual_change,
                                      unit_features)
    records/<index>/lemica[_forecast<k>]   the job's global LeMiCa edges (measured with forecast order k)
    <branch>/<kind>                   the mean over jobs of a pair or per-block table
    lemica/edges, lemica/edges_forecast<k>, lemica/proxy_edges   LeMiCa's (steps x steps) edge weights
"""

from __future__ import annotations

from typing import NamedTuple

# ---------------------------------------------------------------------------------------------- per-step lists
GRID = "grid"  # the branch's normalized sigma (or position) of each calibrated step, 0 ... 1
SIGMA = "sigma"
MAG_RATIO = "mag_ratio"  # MagCache: mean over tokens of ||r_t|| / ||r_(t-1)||
MAG_RATIO_STD = "mag_ratio_std"
INDICATOR_CHANGE = "indicator_change"  # TeaCache's x, mean over jobs
OUTPUT_CHANGE = "output_change"  # TeaCache's y, mean over jobs
FB_CHANGE = "fb_change"  # first-block residual change since the previous step
# a job's record, per branch
STEPS = "steps"
X = "x"  # rel-L1 change of TeaCache's indicator since the previous step
Y = "y"  # rel-L1 change of the transformer's output since the previous step
RECORD_LISTS = (STEPS, SIGMA, X, Y, MAG_RATIO)  # what a record keeps in the JSON

# ---------------------------------------------------------------------------------------------- policy sections
TEACACHE = "teacache"
MAGCACHE = "magcache"
LEMICA = "lemica"
AUTO = "auto"
TAYLORSEER = "taylorseer"  # searched forecast schedules (calibration/schedule_search.py)
HYCA = "hyca"  # HyCa's per-unit solver assignments, searched on the final output
CALIBRATION = "calibration"  # the CalibrationSettings of the run
CALIBRATION_PROMPTS = "calibration_prompts"
PARALLEL_LAYOUT = "parallel_layout"

# ---------------------------------------------------------------------------------------------- array kinds
FB_PAIRS = "fb_pairs"  # (steps x steps) rel-L1 of first-block residuals, lower triangle
RES_PAIRS = "res_pairs"  # the same of block-stack residuals (LeMiCa proxy edges, ERTACache)
# (steps x steps) absolute means, lower triangle with the diagonal: [i, j] = mean|a_i - a_j| (j < i), [i, i] = mean|a_i|
INPUT_PAIRS = "input_pairs"  # a = the block stack's input (EasyCache's x)
OUTPUT_PAIRS = "output_pairs"  # a = the block stack's output (EasyCache's y)
# (steps x steps) mean products of the transformer's outputs, lower triangle with the diagonal: [i, j] = mean(v_i v_j)
OUTPUT_GRAM = "output_gram"  # ERTACache's timestep adjustment: least-squares step sizes of reused outputs
BLOCK_INPUT_CHANGE = "block_input_change"  # (steps x blocks), NaN where undefined
BLOCK_RESIDUAL_CHANGE = "block_residual_change"
UNIT_FEATURES = "unit_features"  # (steps x units x samples): HyCa's per-unit output samples
PAIR_KINDS = (FB_PAIRS, RES_PAIRS, INPUT_PAIRS, OUTPUT_PAIRS, OUTPUT_GRAM)
ABSOLUTE_PAIR_KINDS = (INPUT_PAIRS, OUTPUT_PAIRS, OUTPUT_GRAM)  # means with the diagonal, not rel-L1
BLOCK_KINDS = (BLOCK_INPUT_CHANGE, BLOCK_RESIDUAL_CHANGE)
BRANCH_KINDS = (*PAIR_KINDS, *BLOCK_KINDS, UNIT_FEATURES)

RECORDS = "records/"
LEMICA_EDGES = "lemica/edges"
LEMICA_PROXY_EDGES = "lemica/proxy_edges"
FORECAST_ORDERS = (1, 2)  # the orders LeMiCa's edges may be measured with, besides 0


def branch_array(branch: str, kind: str) -> str:
    """The mean over jobs of `kind` for `branch`."""
    return f"{branch}/{kind}"


def record_prefix(index: int) -> str:
    return f"{RECORDS}{index}/"


def record_array(index: int, branch: str, kind: str) -> str:
    """Job `index`'s `kind` table of `branch`."""
    return f"{record_prefix(index)}{branch}/{kind}"


def edge_key(forecast: int) -> str:
    """The record key (and, under records/<index>/, the array) of global edges measured with `forecast`."""
    return LEMICA if forecast == 0 else f"{LEMICA}_forecast{forecast}"


def record_edges(index: int, forecast: int = 0) -> str:
    return record_prefix(index) + edge_key(forecast)


def lemica_edges(forecast: int = 0) -> str:
    """The profile's LeMiCa edges measured with `forecast` (0: without)."""
    return LEMICA_EDGES if forecast == 0 else f"{LEMICA_EDGES}_forecast{forecast}"


EDGE_ARRAYS = (LEMICA_EDGES, LEMICA_PROXY_EDGES, *(lemica_edges(k) for k in FORECAST_ORDERS))


class ArrayKey(NamedTuple):
    """What an array key names: its kind, and the job index and branch where it has them."""

    kind: str
    index: int | None = None
    branch: str | None = None


def parse(key: str) -> ArrayKey | None:
    """The parts of an array key of the layout above, or None for a key of another shape."""
    if key in EDGE_ARRAYS:
        return ArrayKey(key)
    parts = key.split("/")
    if parts[0] == RECORDS[:-1]:
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in {edge_key(k) for k in (0, *FORECAST_ORDERS)}:
            return ArrayKey(parts[2], int(parts[1]))
        if len(parts) == 4 and parts[1].isdigit() and parts[3] in BRANCH_KINDS:
            return ArrayKey(parts[3], int(parts[1]), parts[2])
        return None
    if len(parts) == 2 and parts[1] in BRANCH_KINDS:
        return ArrayKey(parts[1], None, parts[0])
    return None


def is_kind(key: str, kind: str, *, records: bool | None = None) -> bool:
    """Whether array `key` is a `kind` table; records=True: of a job only, False: a mean over jobs only."""
    parsed = parse(key)
    if parsed is None or parsed.kind != kind:
        return False
    return records is None or (parsed.index is not None) == records
