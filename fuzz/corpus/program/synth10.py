def simple_math_problem() -> int:
    rows = 2
    each = 3
    dead = 4
    added = 4
    plants = rows * each
    alive = plants - dead
    result = alive + added
    return result
