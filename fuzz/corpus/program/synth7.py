def simple_math_problem() -> int:
    count = 2
    each = 12
    extra = 14
    total = count * each
    result = total + extra
    return result
