def simple_math_problem() -> int:
    count = 8
    each = 12
    extra = 8
    total = count * each
    result = total + extra
    return result
