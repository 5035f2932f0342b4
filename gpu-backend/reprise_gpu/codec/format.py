"""Constants of the `spec-v1` KV codec bitstream (docs/kv-codec-format.md), each with its reason."""

from __future__ import annotations

import enum

# --- chunk header -------------------------------------------------------------------------------
SPEC_MAGIC = b"RPSC"          # "Reprise speculative coding"; distinct from the container's "RPKV"
SPEC_VERSION = 1              # bumped on any change to the bitstream or the probability model
SPEC_VERSION_2 = 2            # spec-v2: the same model, independent rANS blocks, values hash instead of SHA-256

# --- rANS ---------------------------------------------------------------------------------------
RANS_WORD_BITS = 16           # renormalize 16 bits at a time: at most one word per symbol when prob_bits <= 16
RANS_L = 1 << 16              # state lower bound; states live in [2^16, 2^32) so u32 arithmetic suffices
PROB_BITS = 15                # frequency tables sum to 2^15: fine enough for p >= 3e-5, tables stay small
DEFAULT_LANES = 4096          # interleaved states; more lanes = faster NumPy/GPU steps, 4 bytes each in the stream
MIN_SYMBOLS_PER_LANE = 1024   # fewer lanes for small chunks so the 32-bit final states cost < 1%

# --- spec-v2 blocks -----------------------------------------------------------------------------
BLOCK_LANES = 32              # one GPU warp per block: the per-step word prefix sum is a warp scan
DEFAULT_BLOCK_STEPS = 512     # 32 * 512 values per block: 140 bytes of states + table = 0.07 bit/value
MAX_BLOCK_STEPS = 4096        # a block's steps run one after another on the GPU: latency grows with them
# values hash: splitmix64's constants (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", 2014)
HASH_GOLDEN = 0x9E3779B97F4A7C15
HASH_C1 = 0xBF58476D1CE4E5B9
HASH_C2 = 0x94D049BB133111EB


class Status(enum.IntEnum):
    """Result of decoding one chunk (dietgpu `ANSDecodeStatus` style); OK is the only usable one."""

    OK = 0
    TRUNCATED = 1             # fewer bytes than the header says
    BAD_MAGIC = 2             # not a spec-v1 chunk
    BAD_VERSION = 3           # a spec version this decoder does not know
    FINGERPRINT_MISMATCH = 4  # produced against another predictor: the prediction would differ
    SHAPE_MISMATCH = 5        # header shapes/token range disagree with what the caller expects
    PAYLOAD_CHECKSUM = 6      # payload bytes changed after encoding
    CORRUPT = 7               # malformed header fields or streams that cannot have come from the encoder
    VALUE_CHECKSUM = 8        # decoded values differ from the encoder's (wrong prediction, or a bug)

# --- grid and probability model -----------------------------------------------------------------
GRID_FRAC_BITS = 3            # prediction centre kept to 1/8 of its ulp: 8 phase tables per narrow class (FP8 -0.03 bit vs 1/4)
MAX_GRID_SHIFT = 40           # targets more than 2^40 grid steps from p are escapes (keeps k < 2^49 in int64)
SCALE_STEPS = 4               # scales are integers in quarter-octaves: sigma = 2^(S / 4)
CLASS_MIN = -12               # sigma/u below 1/8 codes like 1/8 (a near-certain symbol anyway)
CLASS_WIDE = 12               # sigma/u >= 8: bucket the residual by 2^shift, send the shift bits raw
MAX_REL_SCALE = 80            # grid kept fine enough that sigma/u <= 2^20 (quarter-octaves)
WINDOW = 40                   # symbols cover offsets [-WINDOW, WINDOW] (narrow: >= 5 sigma), then escape
N_SYMBOLS = 2 * WINDOW + 2    # offsets, then ESCAPE
ESCAPE = 2 * WINDOW + 1       # symbol index of the escape: the target's raw bits follow
N_NARROW = CLASS_WIDE - CLASS_MIN           # narrow classes, each with 2^GRID_FRAC_BITS phase tables
N_TABLES = N_NARROW * (1 << GRID_FRAC_BITS) + SCALE_STEPS   # + one wide table per quarter-octave
PHI_STEP_BITS = 8             # Gaussian CDF table sampled every 1/256 sigma ...
PHI_RANGE = 10                # ... on [0, 10 sigma]; beyond, the tail mass is < 2^-30 and ignored
PHI_BITS = 30                 # CDF values in Q30: masses fit int64 products with 2^15 totals
# SHA-256 of the Q30 CDF table as little-endian int64 (tables.phi_table): a platform whose erf rounds
# one entry differently fails loudly at import instead of building other frequencies.
PHI_TABLE_SHA256_EXPECTED = "7040bfe6823465748531b3a117adcaac30b966daa78fd262257c3aba6c291095"

# --- FP8-cache mode -----------------------------------------------------------------------------
EXP_MIN = -127                # row scales are 2^e, e in [-127, 127]: one signed byte, covers all of float32
EXP_MAX = 127
