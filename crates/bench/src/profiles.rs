//! Built-in workload profiles for when no dataset file is given: real prompts (written for lapsd, a
//! few dozen per profile) and output lengths drawn from a log-normal distribution per profile.
//!
//! The paper's datasets (Chatbot Instruction Prompts, MBPP, Mini Thinky) are not available here, so
//! the length distributions are assumptions, documented in docs/bench.md:
//! - chatbot: median 100 tokens, sigma 0.8 (short chat answers; ShareGPT replies have a median of
//!   ~1,115 characters = ~280 tokens, chat-instruction datasets are shorter);
//! - mbpp: median 150 tokens, sigma 0.6 (a short Python function with a sentence of explanation);
//! - thinky: median 600 tokens, sigma 0.5 (step-by-step reasoning traces);
//! - code-edit: median 120 tokens, sigma 0.4 (a short Python function given in the prompt, returned
//!   with an edit: most of the reply repeats the prompt, so prompt-lookup drafts are mostly
//!   accepted);
//! - mixed: each request is a code-edit or a chatbot one with probability 1/2 (code and chat in
//!   one stream, where the best speculation length differs by request).
//!
//! Lengths are clamped to [4, max_output_tokens]; with the default cap of 512 most thinky requests
//! ask for the cap.
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, LogNormal};

/// One of the built-in profiles (the same names the simulator uses).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    Chatbot,
    Mbpp,
    Thinky,
    /// Edits of a Python function given in the prompt (the reply mostly repeats it).
    CodeEdit,
    /// Half code-edit, half chatbot requests, drawn independently per request.
    Mixed,
}

/// Shortest output length drawn (the ShareGPT filter of vLLM also drops replies under 4 tokens).
pub const MIN_OUTPUT_TOKENS: u32 = 4;

/// The prompts and output-length distribution of one kind of request.
#[derive(Debug)]
pub struct RequestKind {
    pub prompts: &'static [&'static str],
    /// Median of the output length in tokens.
    pub median_output_tokens: f64,
    /// Log-space sigma of the output length.
    pub sigma: f64,
}

const CHATBOT: RequestKind = RequestKind {
    prompts: CHATBOT_PROMPTS,
    median_output_tokens: 100.0,
    sigma: 0.8,
};
const MBPP: RequestKind = RequestKind {
    prompts: MBPP_PROMPTS,
    median_output_tokens: 150.0,
    sigma: 0.6,
};
const CODE_EDIT: RequestKind = RequestKind {
    prompts: CODE_EDIT_PROMPTS,
    median_output_tokens: 120.0,
    sigma: 0.4,
};
const THINKY: RequestKind = RequestKind {
    prompts: THINKY_PROMPTS,
    median_output_tokens: 600.0,
    sigma: 0.5,
};

impl Profile {
    /// The kinds of request this profile sends, each equally likely.
    pub fn kinds(self) -> &'static [RequestKind] {
        match self {
            Profile::Chatbot => &[CHATBOT],
            Profile::Mbpp => &[MBPP],
            Profile::Thinky => &[THINKY],
            Profile::CodeEdit => &[CODE_EDIT],
            Profile::Mixed => &[CODE_EDIT, CHATBOT],
        }
    }

    /// Draws a prompt and an output length (clamped to [MIN_OUTPUT_TOKENS, max_output_tokens]).
    pub fn sample<R: Rng + ?Sized>(
        self,
        rng: &mut R,
        max_output_tokens: u32,
        output_scale: f64,
    ) -> (&'static str, u32) {
        let kinds = self.kinds();
        // Single-kind profiles draw no extra number, so their plans are the same as before
        // mixed profiles existed.
        let kind = match kinds {
            [only] => only,
            _ => &kinds[rng.gen_range(0..kinds.len())],
        };
        // Non-empty constant lists: `choose` cannot return None.
        let prompt = kind.prompts.choose(rng).copied().unwrap_or("Hello!");
        let (median, sigma) = (kind.median_output_tokens, kind.sigma);
        // median > 0 and sigma > 0 are constants: the distribution is valid.
        let lengths = LogNormal::new(median.ln(), sigma).expect("valid log-normal constants");
        // Scaled before the cap, as datasets are (`--output-scale`).
        let drawn = (lengths.sample(rng) * output_scale).round();
        let upper = max_output_tokens.max(MIN_OUTPUT_TOKENS);
        let tokens = (drawn as u32).clamp(MIN_OUTPUT_TOKENS, upper);
        (prompt, tokens)
    }
}

const CHATBOT_PROMPTS: &[&str] = &[
    "What is the difference between weather and climate?",
    "Can you suggest three names for a small bakery that sells sourdough bread?",
    "How do I politely decline a meeting invitation from my manager?",
    "Explain what a black hole is to a ten-year-old.",
    "What are some good habits for getting better sleep?",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "Why is the sky blue?",
    "Give me a simple recipe for a vegetable soup.",
    "What should I pack for a three-day hiking trip?",
    "How does a credit score work?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Suggest a weekend itinerary for a first visit to Lisbon.",
    "How can I keep my houseplants alive in winter?",
    "What is the difference between a virus and a bacterium?",
    "Write a haiku about the first snow of the year.",
    "How do I start learning to play the guitar?",
    "What are the pros and cons of working from home?",
    "Explain compound interest with a small example.",
    "What is a good way to memorize vocabulary in a new language?",
    "Tell me a fun fact about octopuses.",
    "How do vaccines train the immune system?",
    "What questions should I ask at the end of a job interview?",
    "Give me three ideas for a rainy-day activity with kids.",
    "What is the difference between baking soda and baking powder?",
    "How do solar panels turn sunlight into electricity?",
    "Write a two-sentence horror story.",
    "How can I make my morning routine more productive?",
    "What causes the seasons on Earth?",
    "Recommend a few classic novels for someone who enjoys mysteries.",
    "How do I apologize to a friend after an argument?",
    "What is machine learning, in plain words?",
];

const MBPP_PROMPTS: &[&str] = &[
    "Write a Python function to reverse the words in a sentence.",
    "Write a Python function that returns the second largest number in a list.",
    "Write a Python function to check whether a string is a palindrome, ignoring case and spaces.",
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function to compute the factorial of a non-negative integer iteratively.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write a Python function to find the greatest common divisor of two integers.",
    "Write a Python function that returns all prime numbers below n using a sieve.",
    "Write a Python function to flatten a nested list of integers.",
    "Write a Python function that removes duplicate elements from a list while keeping the order.",
    "Write a Python function to convert a Roman numeral string to an integer.",
    "Write a Python function that returns the n-th Fibonacci number using memoization.",
    "Write a Python function to check whether two strings are anagrams of each other.",
    "Write a Python function that rotates a list to the right by k positions.",
    "Write a Python function to find the longest common prefix of a list of strings.",
    "Write a Python function that counts how many times each word appears in a text.",
    "Write a Python function to transpose a matrix given as a list of lists.",
    "Write a Python function that checks whether a number is a perfect square without using sqrt.",
    "Write a Python function to find the index of a target in a sorted list using binary search.",
    "Write a Python function that converts a decimal number to its binary representation as a string.",
    "Write a Python function to return the sum of the digits of a positive integer.",
    "Write a Python function that finds the maximum sum of a contiguous sub-array.",
    "Write a Python function to validate that brackets in a string are balanced.",
    "Write a Python function that returns the intersection of two lists without duplicates.",
    "Write a Python function to capitalize the first letter of every word in a string.",
    "Write a Python function that computes the running average of a list of numbers.",
    "Write a Python function to find the missing number in a list containing 1 to n with one gap.",
    "Write a Python function that groups a list of words by their first letter into a dictionary.",
    "Write a Python function to compute the area of a triangle from its three side lengths.",
    "Write a Python function that checks whether a year is a leap year.",
    "Write a Python function to count the number of set bits in an integer.",
    "Write a Python function that splits a list into chunks of size k.",
];

const THINKY_PROMPTS: &[&str] = &[
    "A train leaves at 9:40 and arrives at 13:15. How long is the journey in minutes? Think step by step.",
    "If 3 pencils cost 45 cents, how much do 14 pencils cost? Explain your reasoning.",
    "A rectangle has a perimeter of 36 cm and its length is twice its width. What is its area? Reason carefully.",
    "Sam is twice as old as Lea. In 6 years the sum of their ages will be 42. How old is Lea now? Show each step.",
    "A shop discounts a 80 dollar jacket by 25%, then adds 10% tax. What is the final price? Think it through.",
    "How many ways can 4 different books be arranged on a shelf? Explain why.",
    "A tank fills in 6 hours with pipe A and in 3 hours with pipe B. How long with both? Reason step by step.",
    "What is the sum of the integers from 1 to 200? Explain the method you use.",
    "A car travels 150 km at 60 km/h and then 150 km at 100 km/h. What is its average speed? Think carefully.",
    "If a coin is flipped three times, what is the probability of exactly two heads? Show your work.",
    "Maria reads 12 pages on Monday and each day reads 3 more pages than the day before. How many pages has she read after a week? Reason step by step.",
    "A farmer has chickens and cows, 30 heads and 74 legs in total. How many cows are there? Explain.",
    "What is the smallest positive integer divisible by 2, 3, 4, 5 and 6? Think step by step.",
    "A recipe needs 3 eggs for 8 muffins. How many eggs for 28 muffins, rounding up to whole eggs? Explain.",
    "A number increased by 20% and then decreased by 20% gives 96. What was the number? Reason carefully.",
    "How many diagonals does a convex decagon have? Derive the answer.",
    "Two workers paint a fence in 4 hours together; one alone takes 6 hours. How long does the other take alone? Think step by step.",
    "What is the remainder when 2 to the power 20 is divided by 7? Explain your reasoning.",
    "A bag has 5 red and 3 blue marbles. Two are drawn without replacement. What is the probability both are red? Show the steps.",
    "A square garden has an area of 196 square metres. How much fencing is needed to go around it twice? Reason it out.",
    "Tom saves 15 dollars a week and already has 40. After how many weeks will he have at least 250? Think step by step.",
    "Is 221 a prime number? Check carefully and explain.",
    "The average of five numbers is 18. Four of them are 12, 20, 15 and 25. What is the fifth? Show your reasoning.",
    "A clock shows 3:20. What is the angle between the hour and minute hands? Work it out step by step.",
    "A school has 480 students, 5/8 of them take the bus and a third of the rest walk. How many neither take the bus nor walk? Explain.",
    "Solve for x: 3(x - 4) + 2 = 2x + 7. Show each step.",
    "A bicycle wheel has a diameter of 70 cm. How many full turns does it make over 1 km? Reason carefully.",
    "How many three-digit numbers have digits that add up to 5? Think it through systematically.",
    "An investment of 1000 dollars grows 5% per year, compounded yearly. What is it worth after 3 years? Show the calculation.",
    "A ladder 10 m long leans on a wall with its foot 6 m from the wall. How high up the wall does it reach? Explain.",
    "If today is Wednesday, what day of the week will it be in 100 days? Reason step by step.",
    "A box of 24 chocolates is shared so that Ann gets twice as many as Ben and Ben gets twice as many as Cal. How many does each get? Explain.",
];

const CODE_EDIT_PROMPTS: &[&str] = &[
    "Add type hints and a docstring to this Python function, and return the whole function:\n\ndef merge_intervals(intervals):\n    intervals.sort(key=lambda x: x[0])\n    merged = []\n    for start, end in intervals:\n        if merged and start <= merged[-1][1]:\n            merged[-1][1] = max(merged[-1][1], end)\n        else:\n            merged.append([start, end])\n    return merged",
    "Rename the variable `lst` to `numbers` in this Python function and return the whole function:\n\ndef second_largest(lst):\n    first = second = None\n    for x in lst:\n        if first is None or x > first:\n            first, second = x, first\n        elif x != first and (second is None or x > second):\n            second = x\n    return second",
    "Add a docstring to this Python function and return the whole function unchanged otherwise:\n\ndef is_palindrome(text):\n    cleaned = [c.lower() for c in text if c.isalnum()]\n    left, right = 0, len(cleaned) - 1\n    while left < right:\n        if cleaned[left] != cleaned[right]:\n            return False\n        left += 1\n        right -= 1\n    return True",
    "Add type hints to this Python function and return the whole function:\n\ndef count_words(text):\n    counts = {}\n    for word in text.lower().split():\n        word = word.strip('.,;:!?')\n        if word:\n            counts[word] = counts.get(word, 0) + 1\n    return counts",
    "Make this Python function raise a ValueError for negative input, and return the whole function:\n\ndef factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
    "Add type hints and a docstring to this Python function, and return the whole function:\n\ndef merge_sorted(a, b):\n    i = j = 0\n    out = []\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n    out.extend(a[i:])\n    out.extend(b[j:])\n    return out",
    "Rename the function `f` to `gcd` and its arguments to `a` and `b`, and return the whole function:\n\ndef f(x, y):\n    while y:\n        x, y = y, x % y\n    return abs(x)",
    "Add comments explaining each step of this Python function and return the whole function:\n\ndef primes_below(n):\n    if n < 3:\n        return []\n    sieve = [True] * n\n    sieve[0] = sieve[1] = False\n    for i in range(2, int(n ** 0.5) + 1):\n        if sieve[i]:\n            for j in range(i * i, n, i):\n                sieve[j] = False\n    return [i for i, is_prime in enumerate(sieve) if is_prime]",
    "Add type hints to this Python function and return the whole function:\n\ndef flatten(nested):\n    flat = []\n    for item in nested:\n        if isinstance(item, list):\n            flat.extend(flatten(item))\n        else:\n            flat.append(item)\n    return flat",
    "Add a docstring with an example to this Python function and return the whole function:\n\ndef dedupe(items):\n    seen = set()\n    out = []\n    for item in items:\n        if item not in seen:\n            seen.add(item)\n            out.append(item)\n    return out",
    "Add type hints and a docstring to this Python function, and return the whole function:\n\ndef roman_to_int(s):\n    values = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n    total = 0\n    for i, ch in enumerate(s):\n        if i + 1 < len(s) and values[ch] < values[s[i + 1]]:\n            total -= values[ch]\n        else:\n            total += values[ch]\n    return total",
    "Rename the variable `memo` to `cache` in this Python function and return the whole function:\n\ndef fib(n, memo=None):\n    if memo is None:\n        memo = {}\n    if n < 2:\n        return n\n    if n not in memo:\n        memo[n] = fib(n - 1, memo) + fib(n - 2, memo)\n    return memo[n]",
    "Add a docstring to this Python function and return the whole function:\n\ndef are_anagrams(a, b):\n    a = a.replace(' ', '').lower()\n    b = b.replace(' ', '').lower()\n    if len(a) != len(b):\n        return False\n    counts = {}\n    for ch in a:\n        counts[ch] = counts.get(ch, 0) + 1\n    for ch in b:\n        if counts.get(ch, 0) == 0:\n            return False\n        counts[ch] -= 1\n    return True",
    "Add type hints to this Python function and return the whole function:\n\ndef rotate_right(items, k):\n    if not items:\n        return items\n    k %= len(items)\n    return items[-k:] + items[:-k]",
    "Add a docstring and type hints to this Python function, and return the whole function:\n\ndef longest_common_prefix(words):\n    if not words:\n        return ''\n    prefix = words[0]\n    for word in words[1:]:\n        while not word.startswith(prefix):\n            prefix = prefix[:-1]\n            if not prefix:\n                return ''\n    return prefix",
    "Make this Python function return an empty list for an empty matrix, and return the whole function:\n\ndef transpose(matrix):\n    rows = len(matrix)\n    cols = len(matrix[0])\n    result = [[0] * rows for _ in range(cols)]\n    for i in range(rows):\n        for j in range(cols):\n            result[j][i] = matrix[i][j]\n    return result",
    "Add type hints and a docstring to this Python function, and return the whole function:\n\ndef binary_search(items, target):\n    low, high = 0, len(items) - 1\n    while low <= high:\n        mid = (low + high) // 2\n        if items[mid] == target:\n            return mid\n        if items[mid] < target:\n            low = mid + 1\n        else:\n            high = mid - 1\n    return -1",
    "Rename the variable `n` to `number` in this Python function and return the whole function:\n\ndef to_binary(n):\n    if n == 0:\n        return '0'\n    digits = []\n    while n > 0:\n        digits.append(str(n % 2))\n        n //= 2\n    return ''.join(reversed(digits))",
    "Add a docstring to this Python function and return the whole function:\n\ndef max_subarray_sum(numbers):\n    best = current = numbers[0]\n    for x in numbers[1:]:\n        current = max(x, current + x)\n        best = max(best, current)\n    return best",
    "Add type hints and comments to this Python function, and return the whole function:\n\ndef balanced(text):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for ch in text:\n        if ch in '([{':\n            stack.append(ch)\n        elif ch in pairs:\n            if not stack or stack.pop() != pairs[ch]:\n                return False\n    return not stack",
    "Add a docstring to this Python function and return the whole function:\n\ndef running_average(values):\n    averages = []\n    total = 0.0\n    for i, value in enumerate(values, start=1):\n        total += value\n        averages.append(total / i)\n    return averages",
    "Add type hints to this Python function and return the whole function:\n\ndef group_by_first_letter(words):\n    groups = {}\n    for word in words:\n        if not word:\n            continue\n        key = word[0].lower()\n        groups.setdefault(key, []).append(word)\n    return groups",
    "Make this Python function raise a ValueError when the sides cannot form a triangle, and return the whole function:\n\nimport math\n\ndef triangle_area(a, b, c):\n    s = (a + b + c) / 2\n    return math.sqrt(s * (s - a) * (s - b) * (s - c))",
    "Add a docstring and type hints to this Python function, and return the whole function:\n\ndef is_leap_year(year):\n    if year % 400 == 0:\n        return True\n    if year % 100 == 0:\n        return False\n    return year % 4 == 0",
    "Rename the function `chunk` to `split_into_chunks` and return the whole function:\n\ndef chunk(items, size):\n    if size <= 0:\n        raise ValueError('size must be positive')\n    return [items[i:i + size] for i in range(0, len(items), size)]",
    "Add type hints and a docstring to this Python class, and return the whole class:\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        if not self.items:\n            raise IndexError('pop from empty stack')\n        return self.items.pop()\n\n    def peek(self):\n        return self.items[-1] if self.items else None\n\n    def __len__(self):\n        return len(self.items)",
    "Add a docstring to each method of this Python class and return the whole class:\n\nclass Counter:\n    def __init__(self, start=0):\n        self.value = start\n\n    def increment(self, step=1):\n        self.value += step\n        return self.value\n\n    def reset(self):\n        self.value = 0",
    "Add error handling for a missing file to this Python function and return the whole function:\n\ndef read_lines(path):\n    with open(path, encoding='utf-8') as f:\n        lines = [line.rstrip('\\n') for line in f]\n    return [line for line in lines if line.strip()]",
    "Add type hints and a docstring to this Python function, and return the whole function:\n\ndef parse_key_values(text):\n    result = {}\n    for line in text.splitlines():\n        line = line.strip()\n        if not line or line.startswith('#'):\n            continue\n        key, _, value = line.partition('=')\n        result[key.strip()] = value.strip()\n    return result",
    "Rename the variable `d` to `distances` in this Python function and return the whole function:\n\ndef nearest(points, origin):\n    d = []\n    for x, y in points:\n        d.append(((x - origin[0]) ** 2 + (y - origin[1]) ** 2) ** 0.5)\n    best = min(range(len(points)), key=lambda i: d[i])\n    return points[best]",
    "Add a docstring to this Python function and return the whole function:\n\ndef matrix_multiply(a, b):\n    rows, inner, cols = len(a), len(b), len(b[0])\n    result = [[0] * cols for _ in range(rows)]\n    for i in range(rows):\n        for j in range(cols):\n            for k in range(inner):\n                result[i][j] += a[i][k] * b[k][j]\n    return result",
    "Add type hints to this Python function and return the whole function:\n\ndef top_k_frequent(items, k):\n    counts = {}\n    for item in items:\n        counts[item] = counts.get(item, 0) + 1\n    ordered = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))\n    return [item for item, _ in ordered[:k]]",
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn each_profile_has_a_few_dozen_distinct_prompts() {
        for profile in [
            Profile::Chatbot,
            Profile::Mbpp,
            Profile::Thinky,
            Profile::CodeEdit,
        ] {
            let prompts = profile.kinds()[0].prompts;
            assert!(prompts.len() >= 30, "{profile:?}");
            let mut unique = prompts.to_vec();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), prompts.len(), "{profile:?} has duplicates");
        }
    }

    #[test]
    fn drawn_lengths_have_the_profile_median_and_respect_the_cap() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for profile in [
            Profile::Chatbot,
            Profile::Mbpp,
            Profile::Thinky,
            Profile::CodeEdit,
        ] {
            let median = profile.kinds()[0].median_output_tokens;
            let mut lengths: Vec<u32> = (0..20_001)
                .map(|_| profile.sample(&mut rng, 100_000, 1.0).1)
                .collect();
            lengths.sort_unstable();
            let drawn_median = lengths[lengths.len() / 2] as f64;
            assert!(
                (drawn_median - median).abs() < 0.05 * median,
                "{profile:?}: median {drawn_median}, expected {median}"
            );
            let capped = (0..1000).map(|_| profile.sample(&mut rng, 64, 1.0).1);
            assert!(capped
                .into_iter()
                .all(|t| (MIN_OUTPUT_TOKENS..=64).contains(&t)));
        }
    }

    #[test]
    fn output_scale_scales_profile_lengths_before_the_cap() {
        for profile in [
            Profile::Chatbot,
            Profile::Mbpp,
            Profile::Thinky,
            Profile::CodeEdit,
        ] {
            let median = profile.kinds()[0].median_output_tokens;
            let draw = |scale: f64| -> Vec<u32> {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                (0..2_001)
                    .map(|_| profile.sample(&mut rng, 100_000, scale).1)
                    .collect()
            };
            let (full, quarter) = (draw(1.0), draw(0.25));
            // Same draws, a quarter of the length each (up to rounding and the minimum).
            for (f, q) in full.iter().zip(&quarter) {
                let expected = (f64::from(*f) * 0.25).round() as u32;
                assert!(
                    q.abs_diff(expected.max(MIN_OUTPUT_TOKENS)) <= 1,
                    "{f} -> {q}"
                );
            }
            let mut sorted = quarter.clone();
            sorted.sort_unstable();
            let drawn_median = f64::from(sorted[sorted.len() / 2]);
            assert!(
                (drawn_median - 0.25 * median).abs() < 0.1 * median,
                "{profile:?}: median {drawn_median}, expected {}",
                0.25 * median
            );
        }
    }

    #[test]
    fn mixed_sends_code_edit_and_chatbot_requests_in_equal_shares() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 4_000u32;
        let (mut code_edit, mut chatbot) = (0u32, 0u32);
        for _ in 0..n {
            let (prompt, _) = Profile::Mixed.sample(&mut rng, 512, 1.0);
            if CODE_EDIT_PROMPTS.contains(&prompt) {
                code_edit += 1;
            } else if CHATBOT_PROMPTS.contains(&prompt) {
                chatbot += 1;
            } else {
                panic!("mixed drew a prompt of neither kind: {prompt}");
            }
        }
        // Binomial(4000, 1/2): sd ~32, so +-200 is >6 sd.
        assert!(
            code_edit.abs_diff(n / 2) < 200,
            "code-edit {code_edit}, chatbot {chatbot}"
        );
        assert_eq!(code_edit + chatbot, n);
    }
}
