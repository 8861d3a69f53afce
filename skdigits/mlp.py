"""NumpyMLPClassifier and NumpyMLPRegressor: scikit-learn's MLPClassifier and
MLPRegressor on our own NumPy engine.

The two share their network (:class:`_MLPNetwork`: dense layers, dropout,
batch norm), their parameter constraints and most of their documentation;
they differ in the task base class (:mod:`skdigits._classifier`,
:mod:`skdigits._regressor`): the output layer, the loss and the score.
"""

from functools import partial
from numbers import Integral
from string import Template

from sklearn.utils._param_validation import Interval, StrOptions

from ._base import TRAINING_PARAMETERS, activated, positive_ints
from ._classifier import BaseNetClassifier
from ._regressor import BaseNetRegressor
from .nn import Dense, Dropout, Network

#: The constraints of the parameters that shape an MLP (beside the shared ones).
MLP_PARAMETER_CONSTRAINTS = {
    "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
    "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
    "max_fun": [Interval(Integral, 1, None, closed="left")],
    "weight_init": [StrOptions({"glorot", "he"})],
    "image_shape": [StrOptions({"auto"}), tuple, list],
}


class _MLPNetwork:
    """The multi-layer perceptron's layer stack, for either task: dense
    hidden layers (each optionally batch-normalised and followed by dropout),
    then a linear output layer whose output function the task chooses."""

    # The MLP reads rows as images only to augment them.
    _training_parameters = TRAINING_PARAMETERS | {"image_shape"}

    def _hidden_sizes(self):
        return positive_ints(self.hidden_layer_sizes, "hidden_layer_sizes")

    def _make_network(self, n_features, n_outputs, out_activation, dtype):
        sizes = self._hidden_sizes()
        rates = self._dropout_rates(len(sizes))
        layers = []
        for units, rate in zip(sizes, rates):
            layers += activated(partial(Dense, units), self.activation, self.batch_norm)
            if rate > 0:
                layers.append(Dropout(rate))
        layers.append(Dense(n_outputs, "identity"))
        network = Network(layers, out_activation, dtype)
        return network, (n_features,)


# ---------------------------------------------------------------- documentation
# The parameters and attributes the two MLPs share, written once.  ``$peer``
# is scikit-learn's estimator, ``$score`` the early-stopping score,
# ``$task_parameters`` the task's own parameters after ``dropout`` (in
# signature order), ``$out_activation`` what ``out_activation_`` holds.
_SHARED_PARAMETERS = """\
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        The ith element is the number of neurons in the ith hidden layer.
    activation : {'identity', 'logistic', 'tanh', 'relu'}, default='relu'
        Activation function of the hidden layers.
    solver : {'lbfgs', 'sgd', 'adam'}, default='adam'
        'lbfgs' is scipy's L-BFGS-B on our loss and gradient; 'sgd' is
        stochastic gradient descent with momentum; 'adam' is Adam.
    alpha : float, default=0.0001
        Strength of the L2 penalty ``0.5 * alpha * ||W||^2 / n_samples``.
    batch_size : int or 'auto', default='auto'
        Mini-batch size; 'auto' is ``min(200, n_samples)``.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Schedule for the 'sgd' solver (see :class:`skdigits.nn.SGD`).
    learning_rate_init : float, default=0.001
        Initial step size for 'sgd' and 'adam'.
    power_t : float, default=0.5
        Exponent of the 'invscaling' schedule.
    max_iter : int, default=200
        Maximum number of epochs ('sgd', 'adam') or iterations ('lbfgs').
    shuffle : bool, default=True
        Whether to shuffle samples in each epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, the early-stopping split, shuffling and
        dropout.  With 'glorot' initialisation in float64, the initial weights
        equal $peer's for the same ``random_state``.
    tol : float, default=1e-4
        Required improvement of the loss (or validation score) per epoch.
    verbose : bool, default=False
        Print the loss after every epoch.
    warm_start : bool, default=False
        Reuse the previous solution as initialisation for the next ``fit``.
    momentum : float, default=0.9
        Momentum of 'sgd'.
    nesterovs_momentum : bool, default=True
        Use Nesterov's momentum with 'sgd'.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop when the validation
        $score stops improving, and keep the best weights.
    validation_fraction : float, default=0.1
        Held-out share for early stopping.
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's decay rates of the first and second moment estimates.
    epsilon : float, default=1e-8
        Adam's numerical stability term.
    n_iter_no_change : int, default=10
        Epochs without ``tol`` improvement before stopping.
    max_fun : int, default=15000
        Maximum number of loss evaluations for 'lbfgs'.
    dropout : float or array-like of shape (n_layers - 2,), default=0.0
        Dropout rate of each hidden layer's output during training (one rate
        for all, or one per layer).  Inactive at prediction.
$task_parameters\
    dtype : {'auto', 'float32', 'float64'}, default='auto'
        Dtype of the weights and of all computation.  'float32' is about twice
        as fast on large networks; 'float64' reproduces $peer to
        rounding.  'auto' picks 'float32' when an epoch takes at least 1e8
        multiply-adds (n_samples times the network's multiply-adds per
        sample; e.g. 1,000 MNIST digits through 784-100-10) and 'float64' for
        smaller problems, where an epoch takes milliseconds either way and
        float32 would only cost exactness.  It is decided on the first call
        to ``fit`` or ``partial_fit``; the choice is in ``dtype_``.
    lr_schedule : {'cosine', 'one-cycle'} or None, default=None
        A schedule on the step size of 'sgd' and 'adam' over the planned
        ``max_iter`` epochs, mini-batch by mini-batch: 'cosine' decays it
        from ``learning_rate_init`` to 0 along a half cosine; 'one-cycle'
        warms it up linearly from ``learning_rate_init / 25`` to
        ``learning_rate_init`` over the first 30% of the steps, then decays
        it along a cosine; epochs without ``tol`` improvement count towards
        ``n_iter_no_change`` only after that warm-up.  It multiplies whatever
        ``learning_rate`` does (which keeps its scikit-learn meaning); None
        leaves the step size exactly as $peer's.  A scheduled fit that runs
        all ``max_iter`` epochs has completed its plan: it does not warn that
        it has not converged (``stop_reason_`` is still 'max_iter').
    batch_norm : bool, default=False
        Normalise each hidden layer's pre-activations over the mini-batch
        (Ioffe & Szegedy, 2015), with learned scale and shift, and with
        running averages of the batch statistics at prediction.  Sample
        weights enter the batch statistics.  Needs 'adam' or 'sgd'.
    augment : {'affine', 'elastic'}, Augmentation or None, default=None
        Distort every training mini-batch afresh, never at prediction:
        'affine' (random rotation, slant, size and shift), 'elastic' (Simard
        et al.'s elastic distortion on top of milder affine ones), or an
        :class:`~skdigits.augmentation.Augmentation` with your settings (its
        parameters tune in a grid search as ``augment__rotation``, ...).  Rows
        are read as images of ``image_shape``.  Each row's distortion is a
        function of its pixels, ``random_state`` and the batch, so a fit is
        reproducible and integer sample weights still equal repeated rows.
        Needs 'adam' or 'sgd'.
    image_shape : 'auto', (h, w) or (h, w, channels), default='auto'
        How a row is read as an image for ``augment`` (as for
        :class:`NumpyCNNClassifier`: 'auto' is square when n_features is a
        perfect square, else a one-row strip).  Not used without ``augment``.
    weight_init : {'glorot', 'he'}, default='glorot'
        'glorot' is scikit-learn's uniform Glorot initialisation (used by
        default so results line up with $peer); 'he' draws
        N(0, 2 / fan_in) weights and zero biases, the usual choice for deep
        ReLU networks.
"""

_SHARED_ATTRIBUTES = """\
    loss_ : float
        The loss at the last epoch (L-BFGS: at the solution).
    best_loss_ : float or None
        The minimum loss reached; None with early stopping.
    loss_curve_ : list of float
        The loss after each epoch (L-BFGS: after each iteration).
    validation_scores_ : list of float or None
        Validation $score after each epoch, with early stopping.
    best_validation_score_ : float or None
        The best validation $score, with early stopping.
    t_ : int
        Number of training samples seen by the stochastic solver.
    stop_reason_ : str
        Why the last ``fit`` or ``partial_fit`` stopped: 'converged' (the
        stopping rule on ``tol`` / ``n_iter_no_change`` was met, or L-BFGS
        converged), 'max_iter' (the ``max_iter`` or ``max_fun`` budget ran
        out, with a ConvergenceWarning), 'interrupted' (Ctrl-C), 'callback'
        (a ``sklearn.callback`` callback asked to stop), 'partial_fit' (the
        one epoch of ``partial_fit`` is done) or 'diverged' (with early
        stopping, the loss turned non-finite: the fit ends on the best
        weights with a ConvergenceWarning; without early stopping a diverging
        fit raises ValueError instead).
    coefs_ : list of ndarray
        Weight matrix of each layer, shape (fan_in, fan_out), in ``dtype``
        ($peer keeps the input's dtype instead).  Views of the
        parameter buffer: assigning to them sets the weights.
    intercepts_ : list of ndarray
        Bias vector of each layer, in ``dtype``.
    dtype_ : str
        The compute dtype used: ``dtype``, or what 'auto' chose.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when X has string column names.
    n_iter_ : int
        Epochs run by the last call (iterations for 'lbfgs').
    n_layers_ : int
        Number of layers, input and output included.
    n_outputs_ : int
        Number of outputs.
    out_activation_ : str
        $out_activation
"""


def _mlp_docstring(template, *, peer, score, out_activation, task_parameters=""):
    """``template`` with ``$shared_parameters`` and ``$shared_attributes`` filled in."""
    fill = dict(peer=peer, score=score, out_activation=out_activation,
                task_parameters=task_parameters)
    return Template(template).substitute(
        shared_parameters=Template(_SHARED_PARAMETERS).substitute(fill),
        shared_attributes=Template(_SHARED_ATTRIBUTES).substitute(fill))


_CLASSIFIER_DOC = """Multi-layer perceptron classifier whose every pass is our own NumPy code.

    A drop-in for :class:`sklearn.neural_network.MLPClassifier`: the same
    parameters with the same defaults and meaning, the same fitted attributes
    and the same behaviour (``fit``, ``partial_fit``, ``warm_start``, early
    stopping, multilabel targets, sparse input, sample weights).  It adds
    ``dropout``, ``class_weight`` and the compute ``dtype``, and it is faster:
    computation runs in float32 by default, mini-batches are gathered into
    reused buffers, and the optimizer updates one flat parameter vector.

    Parameters
    ----------
$shared_parameters
    Attributes
    ----------
    classes_ : ndarray or list of ndarray of shape (n_classes,)
        Class labels.
$shared_attributes
    See Also
    --------
    sklearn.neural_network.MLPClassifier : the reference implementation.
    NumpyMLPRegressor : the same network for regression.
    NumpyCNNClassifier : a convolutional network with the same API.

    Notes
    -----
    With ``warm_start=True`` (and in ``partial_fit``) only the training
    parameters (learning rates, ``alpha``, ``max_iter``, ``tol``, the
    schedule, ...) may change between fits; changing one that shapes the
    network (``hidden_layer_sizes``, ``activation``, ``dropout``, ``dtype``,
    ``weight_init``) raises ValueError naming it.

    Predictions are computed in fixed-size chunks so that a row's output does
    not depend on the other rows it is predicted with.  ``predict_proba``
    returns float64 whatever the compute ``dtype``.  Ctrl-C during ``fit``
    stops at the end of the current mini-batch with a warning and leaves a
    usable model.  A diverging fit (non-finite loss) raises ``ValueError``
    and keeps the last finite weights.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdigits import NumpyMLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = NumpyMLPClassifier(hidden_layer_sizes=(64,), tol=1e-2, n_iter_no_change=3,
    ...                          random_state=0).fit(X / 16, y)
    >>> clf.predict(X[:5] / 16)
    array([0, 1, 2, 3, 4])
    >>> clf.stop_reason_, clf.n_iter_
    ('converged', 34)
    >>> clf.predict_proba(X[:1] / 16).shape
    (1, 10)
    """

_CLASS_WEIGHT_DOC = """\
    class_weight : dict, 'balanced' or None, default=None
        Weight of each class in the loss, ``{label: weight}``; 'balanced' uses
        ``n_samples / (n_classes * np.bincount(y))``.  Multiplies
        ``sample_weight``.  Not for multilabel targets.
"""

_REGRESSOR_DOC = """Multi-layer perceptron regressor whose every pass is our own NumPy code.

    A drop-in for :class:`sklearn.neural_network.MLPRegressor`: the same
    parameters with the same defaults and meaning (``loss`` first, as in
    scikit-learn >= 1.7), the same fitted attributes and the same behaviour
    (``fit``, ``partial_fit``, ``warm_start``, early stopping on R², one or
    several outputs, sparse input, sample weights).  It shares everything
    but the output layer, the loss and the score with
    :class:`NumpyMLPClassifier`, and adds what that adds: ``dropout``,
    ``batch_norm``, ``lr_schedule``, the compute ``dtype``, ``weight_init``.

    Parameters
    ----------
    loss : {'squared_error', 'poisson'}, default='squared_error'
        'squared_error': half the squared error of a linear (identity)
        output, ``0.5 * sum_k (y_k - z_k)^2`` per sample.  'poisson': half
        the Poisson deviance ``y log(y / mu) - y + mu`` of the mean
        ``mu = exp(z)`` (a log link; the output activation is 'exp'), for
        counts and rates; it needs ``y >= 0``.  Both are averaged over the
        samples (weighted by ``sample_weight``) and summed over the outputs.
$shared_parameters
    Attributes
    ----------
$shared_attributes
    See Also
    --------
    sklearn.neural_network.MLPRegressor : the reference implementation.
    NumpyMLPClassifier : the same network for classification.

    Notes
    -----
    With one output the loss is MLPRegressor's to rounding.  With several,
    MLPRegressor reports the squared error averaged over the outputs but
    follows the gradient of their sum (scikit-learn issue #8349); here loss
    and gradient are both of the sum.  The mini-batch updates are the same
    either way, but ``loss_``, ``loss_curve_`` (so the ``tol`` stopping rule)
    and L-BFGS, which needs the two to agree, differ.

    With ``warm_start=True`` (and in ``partial_fit``) only the training
    parameters (learning rates, ``alpha``, ``max_iter``, ``tol``, the
    schedule, ...) may change between fits; changing one that shapes the
    network (``loss``, ``hidden_layer_sizes``, ``activation``, ``dropout``,
    ``dtype``, ``weight_init``) raises ValueError naming it, and so does a
    ``y`` with another number of outputs.

    Predictions are computed in fixed-size chunks so that a row's output does
    not depend on the other rows it is predicted with.  ``predict`` returns
    float32 when X and the compute ``dtype`` are float32, float64 otherwise,
    and raises ``ValueError`` rather than return inf or NaN.  Ctrl-C during
    ``fit`` stops at the end of the current mini-batch with a warning and
    leaves a usable model.  A diverging fit (non-finite loss) raises
    ``ValueError`` and keeps the last finite weights.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skdigits import NumpyMLPRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> reg = NumpyMLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01,
    ...                         max_iter=500, random_state=0).fit(X, y)
    >>> reg.stop_reason_, reg.n_iter_, reg.out_activation_
    ('converged', 278, 'identity')
    >>> round(reg.score(X, y), 2)
    0.57
    >>> reg.predict(X[:3]).round(1)
    array([209.8,  69.5, 190.5])
    """


class NumpyMLPClassifier(_MLPNetwork, BaseNetClassifier):
    __doc__ = _mlp_docstring(
        _CLASSIFIER_DOC, peer="MLPClassifier", score="accuracy",
        out_activation="'softmax' for multiclass, 'logistic' for binary and multilabel.",
        task_parameters=_CLASS_WEIGHT_DOC)

    _parameter_constraints: dict = {
        **BaseNetClassifier._parameter_constraints,
        **MLP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
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
        max_fun=15000,
        dropout=0.0,
        class_weight=None,
        dtype="auto",
        lr_schedule=None,
        batch_norm=False,
        augment=None,
        image_shape="auto",
        weight_init="glorot",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
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
        self.max_fun = max_fun
        self.dropout = dropout
        self.class_weight = class_weight
        self.dtype = dtype
        self.lr_schedule = lr_schedule
        self.batch_norm = batch_norm
        self.augment = augment
        self.image_shape = image_shape
        self.weight_init = weight_init


class NumpyMLPRegressor(_MLPNetwork, BaseNetRegressor):
    __doc__ = _mlp_docstring(
        _REGRESSOR_DOC, peer="MLPRegressor", score="R²",
        out_activation="'identity' for loss='squared_error', 'exp' for loss='poisson'.")

    _parameter_constraints: dict = {
        **BaseNetRegressor._parameter_constraints,
        **MLP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
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
        max_fun=15000,
        dropout=0.0,
        dtype="auto",
        lr_schedule=None,
        batch_norm=False,
        augment=None,
        image_shape="auto",
        weight_init="glorot",
    ):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
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
        self.max_fun = max_fun
        self.dropout = dropout
        self.dtype = dtype
        self.lr_schedule = lr_schedule
        self.batch_norm = batch_norm
        self.augment = augment
        self.image_shape = image_shape
        self.weight_init = weight_init
