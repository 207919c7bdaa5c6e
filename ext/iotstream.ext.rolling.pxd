# Augments rolling.py when Cython compiles it (found by its dotted name on the include path setup.py
# gives): the one thing pure-Python mode cannot spell.
cdef extern from *:
    """
    #define IOTS_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void prefetch "IOTS_PREFETCH"(const void *p) noexcept nogil
