def simple_math_problem() -> int:
    paid = 25
    count = 3
    price = 6
    cost = count * price
    result = paid - cost
    return result
