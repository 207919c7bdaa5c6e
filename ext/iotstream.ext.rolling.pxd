# Augments rolling.py when Cython compiles it (found by its dotted name on the include path setup.py
# gives): the one thing pure-Python mode cannot spell.
cdef extern from *:
    """
    #define IOTS_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void prefetch "IOTS_PREFETCH"(const void *p) noexcept nogil

# The integer constants of rolling.py (state columns, flags, counts) as C constants the compiler folds
# into addresses; rolling.py takes the same values from _common by name and refuses to import when
# the two disagree.
cdef enum:
    NF = 51
    NI = 15
    NP = 10
    F_SHIFT = 0
    F_PREV = 6            # last real value added
    F_RPREV = 7           # last in-order one (rate)
    F_EWM_MEAN = 8
    F_EWM_VAR = 9
    F_TSHIFT = 10
    F_RES = 17            # learned resolution (0 = none yet)
    F_LEVEL = 18          # predictor of the next reading
    F_RMEAN = 19          # EW mean, variance and lag-1
    F_RVAR = 20           # covariance of the residuals
    F_RCOV = 21
    F_DPREV = 22          # the previous residual
    F_CUP = 23            # the two one-sided CUSUMs
    F_CDOWN = 24
    F_CAL0 = 25           # CAL_LEVELS shares from here
    F_SM = 33             # time-of-day residual, smoothed
    F_SV = 34             # ... its variance around F_SMEAN
    F_SARM = 35           # armed (1) or fired (0)
    F_SMEAN = 36          # ... its slow mean
    F_PROF0 = 37          # SEASON_BUCKETS values from here
    F_RSM = 49            # the change detector's residuals: short EW mean, and its learnt mean square
    F_RSV = 50
    I_POS = 0             # next ring position to write
    I_NFILL = 1           # ring positions in use
    I_NOBS = 2            # real values in the window
    I_NSAME = 3           # run of identical values
    I_LAST_TS = 4         # newest timestamp seen
    I_PREV_TS = 5         # timestamp of F_RPREV
    I_RUN_TS = 6          # start of the identical run
    I_EWM_N = 7           # real values seen
    I_TNOBS = 8
    I_TN = 10             # newest ring positions in the time window
    I_CN = 11             # readings the change detector has seen
    I_NUP = 12            # steps up and down (the counter test)
    I_NDOWN = 13
    I_FIRST_TS = 14       # first real reading
    P_ZTHR = 0
    P_RTHR = 1
    P_LO = 2
    P_HI = 3
    P_MAX_RATE = 4
    P_STUCK_N = 5
    P_STUCK_MS = 6
    P_SILENCE_MS = 7
    P_STHR = 8
    P_TWIN = 9
    V_MEAN = 1
    V_CMEAN = 2
    V_SSQDM = 3
    V_CSSQ = 4
    V_SABS = 5
    V_PREV = 6
    C_NSAME = 1
    Z_FLAG = 1
    THRESHOLD_FLAG = 2
    RATE_FLAG = 4
    STUCK_FLAG = 8
    ROBUST_FLAG = 16
    SHIFT_FLAG = 32
    LATE_FLAG = 64
    ANOMALY = 63
    PF_FAR = 16           # prefetch distances of update's loop, in readings
    PF_NEAR = 8           # the constants of _common as C doubles and integers (the very same values in both uses)
    RVAR_N = 100
    RCOV_N = 100
    SMEAN_N = 1000
    CTR_UPS = 100
    CTR_RATIO = 100
    NCAL = 8
    CAL_NN = 10000
    CAL_P = 100
    NBUCKET = 12
    DAY = 86400000
    SEASON_MIN = 172800000

cdef double CAL_LEV[8]    # CAL_LEVELS (checked at import)
cdef double CAL_INV[8]
