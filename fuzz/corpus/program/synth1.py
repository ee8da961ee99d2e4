def simple_math_problem() -> int:
    first = 14
    second = 6
    third = 13
    points = first + second + third
    result = points // 3
    return result
