def simple_math_problem() -> int:
    daily = 22
    days = 4
    extra = 16
    total = daily * days
    result = total + extra
    return result
