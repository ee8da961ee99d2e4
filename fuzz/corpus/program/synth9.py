def simple_math_problem() -> int:
    has = 46
    lost = 17
    found = 21
    left = has - lost
    result = left + found
    return result
