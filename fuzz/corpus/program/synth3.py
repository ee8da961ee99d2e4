def simple_math_problem() -> int:
    hours = 1
    minutes = 29
    from_hours = hours * 60
    result = from_hours + minutes
    return result
