"""NumpyCNNClassifier: a convolutional network from scratch, scikit-learn style."""

from functools import partial
from numbers import Integral, Real

from sklearn.utils._param_validation import Interval, StrOptions

from ._base import activated, infer_image_shape, positive_ints
from ._classifier import BaseNetClassifier
from .nn import Dense, Dropout, Network
from .nn import Conv2D, Flatten, MaxPool2D
from .nn.conv import fuse_conv_relu_pool


class NumpyCNNClassifier(BaseNetClassifier):
    """Convolutional network classifier on our own NumPy engine.

    Blocks of convolution -> ReLU -> max-pooling, then dense hidden layers and
    a softmax (or logistic) output, trained by the same loop and optimizers as
    :class:`NumpyMLPClassifier`.  Input is 2-D like every scikit-learn
    estimator: each row holds an image's pixels (row-major, channels last),
    so it follows :class:`ImageTransformer` in a Pipeline.

    Parameters
    ----------
    conv_filters : array-like of int, default=(32, 64)
        Filters of each convolution block.
    kernel_size : int, default=3
        Height and width of the convolution kernels ('same' padding, so a
        block keeps its input's size before pooling).
    pool_size : int, default=2
        Max-pooling window and stride.  A block whose input is smaller than
        ``pool_size`` in height or width does not pool.
    hidden_layer_sizes : array-like of int, default=(128,)
        Dense hidden layers after the convolution blocks.
    image_shape : 'auto', (h, w) or (h, w, channels), default='auto'
        How a row of X is read as an image.  'auto': a square one-channel
        image when n_features is a perfect square, otherwise a one-row strip
        ``(1, n_features, 1)`` (so any number of features, even 1 to 3, works).
    activation : {'relu', 'tanh', 'logistic', 'identity'}, default='relu'
        Activation of the convolution and hidden dense layers.
    solver : {'adam', 'sgd'}, default='adam'
    alpha : float, default=0.0001
        L2 penalty on all weights.
    batch_size : int or 'auto', default=64
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
    max_iter : int, default=12
        Epochs.
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=None
    tol : float, default=1e-4
    verbose : bool, default=False
    warm_start : bool, default=False
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
    n_iter_no_change : int, default=10
    dropout : float or array-like, default=0.5
        Dropout rate after each dense hidden layer (training only).
    conv_dropout : float, default=0.25
        Dropout rate on the output of the convolution blocks (training only).
        Masks are keyed by sample, so fits with integer sample weights still
        equal fits on repeated rows (see :class:`skdigits.nn.Dropout`).
    class_weight : dict, 'balanced' or None, default=None
    dtype : {'auto', 'float32', 'float64'}, default='auto'
        As for :class:`NumpyMLPClassifier`: 'auto' computes in float32 when
        an epoch takes at least 1e8 multiply-adds (a few hundred images),
        float64 for tiny problems.
    lr_schedule : {'cosine', 'one-cycle'} or None, default=None
        As for :class:`NumpyMLPClassifier`.
    batch_norm : bool, default=False
        Batch normalisation after every convolution (per channel) and every
        dense hidden layer, before the activation; as for
        :class:`NumpyMLPClassifier`.
    augment : {'affine', 'elastic'}, Augmentation or None, default=None
        Distort every training mini-batch afresh (never at prediction); as
        for :class:`NumpyMLPClassifier`, with rows read as ``image_shape``.
    weight_init : {'he', 'glorot'}, default='he'
        He initialisation suits the ReLU convolutions.

    Attributes
    ----------
    classes_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, stop_reason_, coefs_, intercepts_, n_features_in_,
    feature_names_in_, n_iter_, n_layers_, n_outputs_, out_activation_, dtype_
        As for :class:`NumpyMLPClassifier`; ``coefs_`` holds the convolution
        kernels (kh, kw, c_in, filters) then the dense weight matrices.
    image_shape_ : tuple
        The (h, w, channels) each row was read as.

    Notes
    -----
    ``max_iter=12`` is an epoch budget that suits MNIST-sized data, not a
    convergence point: the training loss still falls by more than ``tol``
    after 12 epochs, so a default fit ends with scikit-learn's
    ConvergenceWarning, as ``MLPClassifier`` warns whenever ``max_iter``
    ends the fit.  For a fit that stops on its own, set
    ``early_stopping=True`` (with ``n_iter_no_change`` below ``max_iter``).
    With ``warm_start=True`` only training parameters may change between
    fits, as for :class:`NumpyMLPClassifier`.

    A block whose 3x3 ReLU convolution pools 2x2 without ``batch_norm`` is
    built as one :class:`skdigits.nn.ConvReLUPool2D` layer, which computes
    the separate convolution and pooling layers' output in less time and
    memory: their bits by Winograd (16 input channels or more), their bits
    forward and their gradients to rounding by im2col (fewer channels).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdigits import NumpyCNNClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> import warnings
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> with warnings.catch_warnings():  # 5 epochs: a demonstration, not a converged fit
    ...     warnings.simplefilter("ignore", ConvergenceWarning)
    ...     clf = NumpyCNNClassifier(conv_filters=(8,), hidden_layer_sizes=(32,), max_iter=5,
    ...                              random_state=0).fit(X[:500] / 16, y[:500])
    >>> clf.stop_reason_
    'max_iter'
    >>> clf.image_shape_
    (8, 8, 1)
    >>> clf.predict_proba(X[:2] / 16).shape
    (2, 10)
    """

    _parameter_constraints: dict = {
        **BaseNetClassifier._parameter_constraints,
        "conv_filters": ["array-like"],
        "kernel_size": [Interval(Integral, 1, None, closed="left")],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like"],
        "image_shape": [StrOptions({"auto"}), tuple, list],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"sgd", "adam"})],
        "weight_init": [StrOptions({"glorot", "he"})],
        "conv_dropout": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        conv_filters=(32, 64),
        kernel_size=3,
        pool_size=2,
        hidden_layer_sizes=(128,),
        image_shape="auto",
        *,
        activation="relu",
        solver="adam",
        alpha=0.0001,
        batch_size=64,
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=12,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        dropout=0.5,
        conv_dropout=0.25,
        class_weight=None,
        dtype="auto",
        lr_schedule=None,
        batch_norm=False,
        augment=None,
        weight_init="he",
    ):
        self.conv_filters = conv_filters
        self.kernel_size = kernel_size
        self.pool_size = pool_size
        self.hidden_layer_sizes = hidden_layer_sizes
        self.image_shape = image_shape
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.conv_dropout = conv_dropout
        self.class_weight = class_weight
        self.dtype = dtype
        self.lr_schedule = lr_schedule
        self.batch_norm = batch_norm
        self.augment = augment
        self.weight_init = weight_init

    def _make_network(self, n_features, n_outputs, out_activation, dtype):
        shape = infer_image_shape(n_features, self.image_shape)
        self.image_shape_ = shape
        filters = positive_ints(self.conv_filters, "conv_filters")
        hidden = positive_ints(self.hidden_layer_sizes, "hidden_layer_sizes")
        rates = self._dropout_rates(len(hidden))
        layers, (h, w, channels) = [], shape
        for n_filters in filters:
            conv = partial(Conv2D, n_filters, self.kernel_size, padding="same")
            block = activated(conv, self.activation, self.batch_norm)
            pools = h >= self.pool_size and w >= self.pool_size and self.pool_size > 1
            if pools:
                block.append(MaxPool2D(self.pool_size))
            # One layer computing the outputs window by window (see ConvReLUPool2D).
            layers += fuse_conv_relu_pool(block, (h, w, channels))
            if pools:
                h, w = h // self.pool_size, w // self.pool_size
            channels = n_filters
        layers.append(Flatten())
        if self.conv_dropout > 0:
            layers.append(Dropout(self.conv_dropout))
        for units, rate in zip(hidden, rates):
            layers += activated(partial(Dense, units), self.activation, self.batch_norm)
            if rate > 0:
                layers.append(Dropout(rate))
        layers.append(Dense(n_outputs, "identity"))
        network = Network(layers, out_activation, dtype)
        return network, shape
