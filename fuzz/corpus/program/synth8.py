def simple_math_problem() -> int:
    first = 7
    second = 15
    third = 32
    points = first + second + third
    result = points // 3
    return result
