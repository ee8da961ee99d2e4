def simple_math_problem() -> int:
    people = 30
    off_first = 4
    on_first = 12
    off_second = 26
    first = people - off_first + on_first
    result = first - off_second
    return result
