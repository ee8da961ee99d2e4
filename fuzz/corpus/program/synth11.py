def simple_math_problem() -> int:
    people = 38
    off_first = 9
    on_first = 5
    off_second = 10
    first = people - off_first + on_first
    result = first - off_second
    return result
