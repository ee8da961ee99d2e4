def simple_math_problem() -> int:
    a = (3 + 4) * 2 ** 3 // 5 % 7
    b = round(abs(-2.5) / 3, 2)
    c = int(float(min(a, 9)) + max(1, 2, 3))
    result = a - b * c
    return result
