import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lab import models, train

# Building a model costs, on CPU, about one second per distinct parameter shape: the
# XLA compilation of the random initialiser. So the networks below are tiny and share
# shapes: 4 channels everywhere, and images (non-square, so a swapped axis cannot go
# unnoticed) hold as many values and tokens as signals.
INPUT_SHAPES = {"image": (4, 2, 4), "signal": (8, 4)}
NUM_CLASSES = 5
SMALL = {
    "logreg": {},
    "mlp": {"hidden": (32,)},
    "cnn": {"channels": (4, 4), "hidden": 4},
    "resnet": {"widths": (4, 4)},
    "transformer": {"dim": 4, "depth": 1, "heads": 2, "mlp_dim": 4},
    "wrn": {"depth": 10, "widen": 1},
    "vit": {"patch_size": 2, "dim": 4, "depth": 1, "heads": 2, "mlp_dim": 4},
}
# Every model with every kind of input it takes.
MODEL_INPUTS = [(name, kind) for name, cls in models.MODELS.items() for kind in INPUT_SHAPES if kind in cls.modalities]
MODELS_WITH_DROPOUT = ["mlp", "cnn", "transformer"]


def small_model(name, input_kind, *, seed=0, **hyperparameters):
    hyperparameters = {**SMALL[name], **hyperparameters}
    return models.make_model(name, INPUT_SHAPES[input_kind], NUM_CLASSES, seed=seed, **hyperparameters)


def batch(input_shape, n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *input_shape)).astype(np.float32)


def param_paths(model) -> list[tuple]:
    return [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


# ------------------------------------------------------------- the classifier contract


@pytest.mark.parametrize(("name", "input_kind"), MODEL_INPUTS)
def test_logits_features_and_parameter_paths(name, input_kind):
    model = small_model(name, input_kind)
    x = batch(INPUT_SHAPES[input_kind])

    features = model.features(x)
    logits = model(x)

    assert isinstance(model.feature_dim, int)
    assert features.shape == (4, model.feature_dim)
    assert logits.shape == (4, NUM_CLASSES)
    np.testing.assert_allclose(logits, model.head(features), rtol=1e-6)
    assert isinstance(model.head, nnx.Linear)
    assert {path[0] for path in param_paths(model)} <= {"backbone", "head"}  # logreg's backbone has none
    assert sorted(path for path in param_paths(model) if path[0] == "head") == [("head", "bias"), ("head", "kernel")]


def test_head_can_be_replaced_for_transfer():
    model = small_model("cnn", "image")
    model.head = nnx.Linear(model.feature_dim, 3, rngs=nnx.Rngs(1))

    assert model(batch(INPUT_SHAPES["image"])).shape == (4, 3)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_flattening_models_take_any_rank(name):
    model = models.make_model(name, (2, 2, 2, 4), NUM_CLASSES, seed=0, **SMALL[name])

    assert model(batch((2, 2, 2, 4))).shape == (4, NUM_CLASSES)


# ---------------------------------------------------------------------- train vs eval


@pytest.mark.parametrize("name", MODELS_WITH_DROPOUT)
def test_dropout_is_random_in_train_mode_and_off_in_eval_mode(name):
    x = batch(INPUT_SHAPES["signal"])
    model = small_model(name, "signal", dropout=0.5)
    without_dropout = small_model(name, "signal", dropout=0.0)

    train_1, train_2 = model(x), model(x)
    model.eval()
    eval_1, eval_2 = model(x), model(x)

    assert not np.allclose(train_1, train_2)  # a fresh mask on every call
    assert not np.allclose(train_1, eval_1)
    np.testing.assert_array_equal(eval_1, eval_2)
    # In eval mode dropout is the identity, so only the (seeded) parameters matter.
    np.testing.assert_allclose(eval_1, without_dropout(x), rtol=1e-6)
    model.train()
    assert not np.allclose(model(x), eval_1)


def test_dropout_masks_come_from_the_dropout_stream():
    input_shape = INPUT_SHAPES["image"]
    x = batch(input_shape)

    def train_output(dropout_seed):
        rngs = nnx.Rngs(params=0, dropout=dropout_seed)
        return models.MLP(input_shape, NUM_CLASSES, rngs=rngs, **SMALL["mlp"], dropout=0.5)(x)

    np.testing.assert_array_equal(train_output(1), train_output(1))
    assert not np.allclose(train_output(1), train_output(2))


def test_nnx_view_gives_an_eval_view_without_changing_the_model():
    x = batch(INPUT_SHAPES["image"])
    model = small_model("mlp", "image", dropout=0.5)

    view = nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)

    np.testing.assert_array_equal(view(x), view(x))
    assert not np.allclose(model(x), model(x))  # the model itself still trains


@pytest.mark.parametrize("input_kind", INPUT_SHAPES)
def test_batch_norm_uses_batch_statistics_in_train_mode(input_kind):
    model = small_model("resnet", input_kind)
    x = 3.0 + 2.0 * batch(INPUT_SHAPES[input_kind])
    stem_conv, stem_norm = model.backbone.layers[0], model.backbone.layers[1]
    assert isinstance(stem_norm, nnx.BatchNorm)
    batch_mean = stem_conv(x).mean(axis=tuple(range(x.ndim - 1)))

    logits = model(x)

    # The call moved the running mean from 0 by (1 - momentum) of the batch mean ...
    np.testing.assert_allclose(stem_norm.mean[...], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    # ... and normalising with batch statistics couples the examples of a batch.
    assert not np.allclose(logits[:2], model(x[:2]), atol=1e-4)


@pytest.mark.parametrize("input_kind", INPUT_SHAPES)
def test_batch_norm_uses_running_averages_in_eval_mode(input_kind):
    model = small_model("resnet", input_kind)
    x = 3.0 + 2.0 * batch(INPUT_SHAPES[input_kind])
    model(x)  # in train mode: moves the running averages away from their initial values
    model.eval()
    running_averages = [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]

    logits = model(x)

    # Every example is normalised on its own, with the stored averages ...
    np.testing.assert_allclose(logits[:2], model(x[:2]), rtol=1e-5, atol=1e-5)
    stem_conv, stem_norm = model.backbone.layers[0], model.backbone.layers[1]
    h = stem_conv(x)
    normalised = (h - stem_norm.mean[...]) / np.sqrt(stem_norm.var[...] + stem_norm.epsilon)
    expected = normalised * stem_norm.scale[...] + stem_norm.bias[...]
    np.testing.assert_allclose(stem_norm(h), expected, rtol=1e-5, atol=1e-5)
    # ... which evaluation leaves alone.
    for before, after in zip(running_averages, jax.tree.leaves(nnx.state(model, nnx.BatchStat)), strict=True):
        np.testing.assert_array_equal(before, after)


# --------------------------------------------------------------------------- make_model


@pytest.mark.parametrize("name", [name for name, cls in models.MODELS.items() if "image" in cls.modalities])
def test_make_model_is_deterministic_per_seed(name):
    first = params_of(small_model(name, "image", seed=3))
    again = params_of(small_model(name, "image", seed=3))
    other = params_of(small_model(name, "image", seed=4))

    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_unknown_model_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="'lenet'.*'cnn'.*'logreg'.*'mlp'.*'resnet'.*'transformer'"):
        models.make_model("lenet", (8, 8, 1), 10, seed=0)


def test_unknown_hyperparameter_is_named_with_the_accepted_ones():
    with pytest.raises(TypeError, match=r"\['widths'\].*'cnn'.*\['channels', 'dropout', 'hidden'\]"):
        models.make_model("cnn", (8, 8, 1), 10, seed=0, widths=(8,))
    with pytest.raises(TypeError, match=r"\['hidden'\].*'logreg'.*\[\]"):
        models.make_model("logreg", (8, 8, 1), 10, seed=0, hidden=(8,))


def test_default_hyperparameters():
    assert models.default_hyperparameters("mlp") == {"hidden": (256, 256), "dropout": 0.0}
    assert models.default_hyperparameters("logreg") == {}


@pytest.mark.parametrize(
    ("name", "input_shape", "hyperparameters", "message"),
    [
        ("mlp", (8, 8, 1), {"hidden": (64, 0)}, r"hidden\[1\] must be a positive integer, got 0"),
        ("mlp", (8, 8, 1), {"hidden": ()}, "hidden must be a non-empty sequence"),
        ("mlp", (8, 8, 1), {"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ("cnn", (8, 8, 1), {"dropout": -0.1}, "dropout must be a number in"),
        ("cnn", (8, 8, 1), {"channels": 32}, "channels must be a non-empty sequence of positive integers, got 32"),
        ("cnn", (8, 8, 1), {"hidden": 2.5}, "hidden must be a positive integer, got 2.5"),
        ("resnet", (8, 8, 1), {"widths": (16, -32)}, r"widths\[1\] must be a positive integer, got -32"),
        ("resnet", (8, 8, 1), {"blocks_per_stage": 0}, "blocks_per_stage must be a positive integer"),
        ("transformer", (8, 8, 1), {"patch_size": 3}, "patch_size=3 must divide every spatial axis"),
        ("transformer", (8, 8, 1), {"dim": 30, "heads": 4}, "heads=4 must divide dim=30"),
        ("cnn", (64,), {}, "^model 'cnn' does not take text inputs; choose one of: bag, text_transformer, bert$"),
        ("resnet", (2, 8, 8, 1), {}, "ResNet takes"),
        ("wrn", (8, 8, 1), {"depth": 27}, r"depth must be 6n \+ 4 \(10, 16, 22, 28, ...\), got 27"),
        ("wrn", (8, 8, 1), {"depth": 4}, "depth must be an integer >= 10, got 4"),
        ("wrn", (8, 8, 1), {"widen": 0}, "widen must be a positive integer, got 0"),
        ("wrn", (40, 1), {}, "^model 'wrn' does not take signal inputs; choose one of: logreg, mlp, cnn, resnet, transformer$"),
        ("logreg", (8, 0, 1), {}, r"input_shape\[1\] must be a positive integer, got 0"),
    ],
)
def test_invalid_hyperparameter_values(name, input_shape, hyperparameters, message):
    with pytest.raises(ValueError, match=message):
        models.make_model(name, input_shape, 10, seed=0, **hyperparameters)


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        models.make_model("logreg", (4, 1), 0, seed=0)


# -------------------------------------------------------------------------- attention


def numpy_attention(q, k, v, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v, weights


def qkv():
    """Queries (2, 3, 5, 4), keys (2, 3, 7, 4) and values (2, 3, 7, 6)."""
    rng = np.random.default_rng(0)
    shapes = [(2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6)]
    return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes]


@pytest.mark.parametrize(
    "input_shape, kernel_shape, strides, padding",
    [
        ((3, 8, 8, 2), (3, 3, 2, 5), (1, 1), "SAME"),
        ((3, 7, 5, 2), (3, 3, 2, 5), (2, 2), "SAME"),  # odd sizes: SAME pads one side more
        ((3, 6, 6, 4), (1, 1, 4, 3), (2, 2), "SAME"),  # ResNet's strided 1x1 projection
        ((3, 9, 2), (5, 2, 4), (1,), "SAME"),  # 1-D signals
        ((3, 8, 8, 2), (3, 2, 2, 5), (1, 2), "VALID"),
        ((3, 8, 2), (3, 2, 4), (1,), [(2, 0)]),  # explicit (causal) padding
    ],
)
def test_conv_by_matmul_equals_the_xla_convolution_and_its_gradients(input_shape, kernel_shape, strides, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), input_shape)
    kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
    layout = {3: ("NWC", "WIO", "NWC"), 4: ("NHWC", "HWIO", "NHWC")}[len(input_shape)]
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, layout)

    def loss(conv, x, kernel):
        out = conv(x, kernel, strides, padding, dimension_numbers=numbers)
        return jnp.sum(jnp.sin(out)), out

    (_, expected), expected_grads = jax.value_and_grad(loss, (1, 2), has_aux=True)(jax.lax.conv_general_dilated, x, kernel)
    (_, got), grads = jax.value_and_grad(loss, (1, 2), has_aux=True)(models.conv_by_matmul, x, kernel)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_conv_by_matmul_hands_dilated_and_grouped_convolutions_to_xla():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    numbers = jax.lax.conv_dimension_numbers(x.shape, (3, 3, 2, 4), ("NHWC", "HWIO", "NHWC"))
    for kernel_shape, options in (((3, 3, 4, 4), {"rhs_dilation": (2, 2)}), ((3, 3, 2, 4), {"feature_group_count": 2})):
        kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
        arguments = (x, kernel, (1, 1), "SAME")
        np.testing.assert_allclose(
            models.conv_by_matmul(*arguments, dimension_numbers=numbers, **options),
            jax.lax.conv_general_dilated(*arguments, dimension_numbers=numbers, **options),
            rtol=1e-5, atol=1e-5,
        )


def conv_loss(x, kernel, strides=(2, 1)):
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.sin(models.conv_by_platform(x, kernel, strides, "SAME", dimension_numbers=numbers)))


def conv_arguments():
    return jax.random.normal(jax.random.PRNGKey(0), (2, 8, 6, 3)), jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))


def test_conv_by_platform_compiles_the_matmul_form_for_cpu_and_xla_convolutions_for_gpu_and_tpu():
    from jax import export

    gradient = jax.jit(jax.grad(conv_loss, (0, 1)))

    def lowered(platform):
        return export.export(gradient, platforms=[platform])(*conv_arguments()).mlir_module()

    assert "stablehlo.convolution" not in lowered("cpu") and "stablehlo.dot_general" in lowered("cpu")
    for platform in ("cuda", "rocm", "tpu"):
        assert "stablehlo.convolution" in lowered(platform) and "stablehlo.dot_general" not in lowered(platform)
    # What XLA:CPU compiles holds neither a convolution nor the platform switch.
    compiled = gradient.lower(*conv_arguments()).compile().as_text()
    assert "convolution(" not in compiled and "conditional(" not in compiled


@pytest.mark.parametrize("name", ["matmul", "xla"])
def test_a_forced_convolution_is_used_whatever_the_platform(name):
    with models.convolution(name):
        text = jax.jit(jax.grad(conv_loss, (0, 1))).lower(*conv_arguments()).as_text()
    assert ("stablehlo.convolution" in text) == (name == "xla")
    with pytest.raises(ValueError, match="unknown convolution 'cudnn'; choose one of: matmul, xla"):
        with models.convolution("cudnn"):
            pass


@pytest.mark.parametrize(("name", "input_kind"), [("cnn", "signal"), ("resnet", "image"), ("wrn", "image")])
def test_models_give_the_same_logits_and_gradients_with_either_convolution(name, input_kind):
    x = 3.0 + batch(INPUT_SHAPES[input_kind])

    def logits_and_gradients(convolution):
        graphs, params, model_state = train.Graphs.split(small_model(name, input_kind))

        def loss(params):
            logits = graphs.bind(params, model_state, train=True)(x)  # batch norm on batch statistics
            return jnp.sum(jnp.sin(logits)), logits

        with models.convolution(convolution):
            (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return logits, grads

    logits, grads = logits_and_gradients("matmul")
    expected_logits, expected_grads = logits_and_gradients("xla")
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4), grads, expected_grads)


# ------------------------------------------------------------------- wide resnet


def wrn_parameter_count(depth, widen, num_classes, in_channels=3):
    """By hand: convs have a bias, batch norms a scale and a bias (not their running statistics)."""

    def conv(kernel, inputs, outputs):
        return kernel * kernel * inputs * outputs + outputs

    count, channels = conv(3, in_channels, 16), 16
    for width in (16 * widen, 32 * widen, 64 * widen):
        for _ in range((depth - 4) // 6):
            count += 2 * channels + conv(3, channels, width) + 2 * width + conv(3, width, width)
            count += conv(1, channels, width) if channels != width else 0
            channels = width
    return count + 2 * channels + channels * num_classes + num_classes


@pytest.mark.parametrize(("widen", "num_classes", "count"), [(2, 10, 1_469_642), (8, 100, 23_409_092)])
def test_wrn_has_the_published_parameter_count_and_shapes_on_32x32_images(widen, num_classes, count):
    # Abstract: building WRN-28-2 for real takes half a minute on a CPU, and nothing here needs its values.
    model = nnx.eval_shape(lambda: models.make_model("wrn", (32, 32, 3), num_classes, seed=0, widen=widen))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

    features, logits = nnx.eval_shape(lambda model, x: (model.features(x), model(x)), model, x)

    params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert params == count == wrn_parameter_count(28, widen, num_classes)
    # FixMatch: WRN-28-2 1.5 M, WRN-28-8 23.4 M parameters; USB: 1.47 M and 23.4 M.
    assert round(params / 1e6, 2 if widen == 2 else 1) == (1.47 if widen == 2 else 23.4)
    assert features.shape == (2, 64 * widen) and logits.shape == (2, num_classes)
    assert model.feature_dim == 64 * widen


def test_wrn_blocks_stride_and_widen_as_specified():
    model = nnx.eval_shape(lambda: models.make_model("wrn", (32, 32, 3), 10, seed=0, depth=16, widen=3))
    stem, *blocks, norm, _, _ = model.backbone.layers
    x = nnx.eval_shape(lambda stem, x: stem(x), stem, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))

    shapes = []
    for block in blocks:
        x = nnx.eval_shape(lambda block, x: block(x), block, x)
        shapes.append(x.shape[1:])

    assert isinstance(stem, nnx.Conv) and stem.out_features == 16
    assert shapes == [(32, 32, 48)] * 2 + [(16, 16, 96)] * 2 + [(8, 8, 192)] * 2
    assert [block.activate_shortcut for block in blocks] == [True] + [False] * 5
    assert [len(block.shortcut.layers) for block in blocks] == [1, 0, 1, 0, 1, 0]
    assert norm.num_features == 192


def test_wrn_batch_norm_momentum_is_pytorchs_0_001_and_activations_leak_0_1():
    model = small_model("wrn", "image")
    x = 3.0 + 2.0 * batch(INPUT_SHAPES["image"])
    stem, first_block = model.backbone.layers[0], model.backbone.layers[1]
    h = stem(x)
    batch_mean = h.mean(axis=(0, 1, 2))

    model(x)

    # running = 0.999 * running + 0.001 * batch, from a running mean of 0.
    np.testing.assert_allclose(first_block.norm.mean[...], 0.001 * batch_mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(models._leaky_relu(jnp.array([-2.0, 3.0])), [-0.2, 3.0])


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 9, 3), (2, 41, 5)])
def test_halve_spatial_equals_nnx_max_pool_and_its_gradient_even_with_ties(shape):
    # Small integers after a ReLU: many windows hold several equal maxima (zeros above all).
    x = jax.nn.relu(jax.random.randint(jax.random.PRNGKey(0), shape, -2, 3).astype(jnp.float32))
    window = (2,) * (len(shape) - 2)
    expected, expected_vjp = jax.vjp(lambda x: nnx.max_pool(x, window_shape=window, strides=window), x)
    got, got_vjp = jax.vjp(models.halve_spatial, x)
    cotangent = jax.random.normal(jax.random.PRNGKey(1), expected.shape)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_vjp(cotangent)[0], expected_vjp(cotangent)[0])


def test_scaled_dot_product_attention_matches_numpy():
    q, k, v = qkv()
    expected_output, expected_weights = numpy_attention(q, k, v)

    output = models.scaled_dot_product_attention(q, k, v)
    weights = models.attention_weights(q, k)

    assert output.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)


def test_attention_mask_zeroes_masked_keys():
    q, k, v = qkv()
    mask = np.tril(np.ones((5, 7), bool), k=2)  # query i sees keys 0 .. i + 2
    expected_output, expected_weights = numpy_attention(q, k, v, mask)

    weights = models.attention_weights(q, k, mask)

    np.testing.assert_array_equal(np.asarray(weights)[..., ~mask], 0.0)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-7)
    output = models.scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-6)


def test_fully_masked_query_attends_uniformly_instead_of_nan():
    q, k, v = qkv()
    mask = np.ones((5, 7), bool)
    mask[1] = False  # query 1 may attend to no key

    weights = np.asarray(models.attention_weights(q, k, mask))

    np.testing.assert_allclose(weights[..., 1, :], 1 / 7, rtol=1e-6)
    _, unmasked = numpy_attention(q, k, v)
    np.testing.assert_allclose(np.delete(weights, 1, axis=-2), np.delete(unmasked, 1, axis=-2), rtol=1e-5)


def test_multi_head_attention_attends_within_each_head():
    # The sizes of the tiny transformer of SMALL (8 tokens), so its compiled ops are reused.
    dim, heads, head_dim = 4, 2, 2
    attention = models.MultiHeadSelfAttention(dim, heads, rngs=nnx.Rngs(0))
    x = batch((8, dim))
    qkv_out = np.asarray(attention.qkv(x))
    # The q, k and v projections are consecutive blocks of `dim` columns; head h
    # owns columns h * head_dim : (h + 1) * head_dim of each block.
    per_head = []
    for h in range(heads):
        q, k, v = (qkv_out[..., block * dim + h * head_dim : block * dim + (h + 1) * head_dim] for block in range(3))
        per_head.append(numpy_attention(q, k, v)[0])
    expected = np.concatenate(per_head, axis=-1) @ attention.out.kernel[...] + attention.out.bias[...]

    np.testing.assert_allclose(attention(x), expected, rtol=1e-4, atol=1e-5)


def test_patchify_images_and_signals():
    image = np.arange(4 * 6 * 2).reshape(1, 4, 6, 2)
    patches = np.asarray(models.patchify(jnp.asarray(image), 2))
    assert patches.shape == (1, 6, 8)
    tokens = [image[0, r : r + 2, c : c + 2].reshape(-1) for r in range(0, 4, 2) for c in range(0, 6, 2)]
    np.testing.assert_array_equal(patches[0], np.stack(tokens))

    signal = np.arange(6 * 2).reshape(1, 6, 2)
    np.testing.assert_array_equal(models.patchify(jnp.asarray(signal), 3), signal.reshape(1, 2, 6))


@pytest.mark.parametrize(
    ("spatial_shape", "patch_size"), [((8, 8), 4), ((28, 28), 14), ((40,), 5), ((784,), 98), ((6, 10), 2), ((67,), 67)]
)
def test_default_patch_size(spatial_shape, patch_size):
    assert models.default_patch_size(spatial_shape) == patch_size


# ------------------------------------------------------------------------------ training


def test_mlp_overfits_a_tiny_batch():
    x = batch(INPUT_SHAPES["image"], n=16)
    y = np.arange(16) % NUM_CLASSES
    model = small_model("mlp", "image")
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    first_loss = train_step(model, optimizer)
    for _ in range(100):
        loss = train_step(model, optimizer)

    assert loss < 0.01 * first_loss
    model.eval()
    np.testing.assert_array_equal(model(x).argmax(axis=-1), y)
