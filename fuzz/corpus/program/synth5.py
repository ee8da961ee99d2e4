def simple_math_problem() -> int:
    first = 29
    second = 9
    third = 13
    points = first + second + third
    result = points // 3
    return result
